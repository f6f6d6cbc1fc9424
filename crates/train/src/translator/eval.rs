//! `visa-proxy eval-translator`: the translator against a labelled set of instructions. A case
//! is right when the set of (value, direction) pairs matches exactly; unrelated instructions
//! are right when they produce no shift.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::Translator;
use crate::models::encoder::{EncoderFiles, SentenceEncoder};
use crate::models::service::EncoderService;
use crate::values::ValueId;

#[derive(Deserialize)]
pub struct Case {
    pub instruction: String,
    /// value -> +1 or -1
    pub expect: BTreeMap<ValueId, i32>,
}

pub struct Outcome {
    pub correct: usize,
    pub total: usize,
    pub unrelated_correct: usize,
    pub unrelated_total: usize,
}

pub async fn evaluate(
    translator: &Translator,
    cases: &[Case],
    verbose: bool,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome {
        correct: 0,
        total: 0,
        unrelated_correct: 0,
        unrelated_total: 0,
    };
    for case in cases {
        let t = translator
            .translate(&case.instruction)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let got: BTreeMap<ValueId, i32> = t
            .shifts
            .iter()
            .map(|s| (s.value, s.delta.signum() as i32))
            .collect();
        let ok = got == case.expect;
        out.total += 1;
        out.correct += usize::from(ok);
        if case.expect.is_empty() {
            out.unrelated_total += 1;
            out.unrelated_correct += usize::from(ok);
        }
        if verbose {
            let show = |m: &BTreeMap<ValueId, i32>| {
                if m.is_empty() {
                    "(none)".to_owned()
                } else {
                    m.iter()
                        .map(|(v, s)| format!("{}{v}", if *s > 0 { "+" } else { "-" }))
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            };
            println!(
                "{} {:<60} expected {:<30} got {}",
                if ok { "ok  " } else { "MISS" },
                case.instruction,
                show(&case.expect),
                show(&got)
            );
        }
    }
    Ok(out)
}

pub fn load_cases(path: &Path) -> anyhow::Result<Vec<Case>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

pub fn run(cases_path: &Path, encoder_dir: &Path) -> anyhow::Result<()> {
    let cases = load_cases(cases_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let encoder =
            SentenceEncoder::load(&EncoderFiles::new(encoder_dir), crate::detector::MAX_TOKENS)?;
        let service = Arc::new(EncoderService::start(encoder, 64, 32, Default::default())?);
        let translator = Translator::new(service)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let o = evaluate(&translator, &cases, true).await?;
        println!(
            "accuracy: {}/{} = {:.3} (related instructions {}/{}, unrelated {}/{})",
            o.correct,
            o.total,
            o.correct as f64 / o.total.max(1) as f64,
            o.correct - o.unrelated_correct,
            o.total - o.unrelated_total,
            o.unrelated_correct,
            o.unrelated_total
        );
        Ok(())
    })
}
