//! `visa-proxy eval-rewriter`: rewriters side by side on the same held-out items (Touché23's
//! validation premises with targets made as for training): value L2 and cosine to the target,
//! how much of the distance a rewrite closes, semantic consistency both ways, the paper's Joint
//! Success Rate and a stricter one, how often the shield would fall back, length ratio and
//! latency. Each rewriter is the serving path: mistral.rs with the base GGUF, or with a trained
//! adapter merged in, the serving prompt, one greedy candidate (or `--candidates`/`--rounds`
//! as `[rewriter]` serves them), the serving screening; and the paired differences from the
//! base (`compare.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Decision, RewriteBackend, Rewriter};
use crate::config::Config;
use crate::grpo::data::{self, Item};
use crate::grpo::sample::Rng;
use crate::models::llm::{LlmEngine, LlmStats};
use crate::score::Scorer;
use crate::score::lexical::LexicalScorer;

/// The paper's thresholds: L2 below this and consistency above [`JSR_CONSISTENCY`].
pub const JSR_L2: f32 = 0.8;
pub const JSR_CONSISTENCY: f32 = 0.3;
/// Stricter success: consistency above this and at least half the distance closed.
pub const STRICT_CONSISTENCY: f32 = 0.6;
pub const STRICT_CLOSED: f32 = 0.5;

/// `eval-rewriter`'s options (also the command line's, by `clap`).
#[derive(Debug, Clone, clap::Args)]
pub struct EvalOptions {
    /// Touché23 folder; the held-out items come from `arguments-SPLIT.tsv`.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "validation")]
    pub split: String,
    #[arg(long, default_value_t = 30)]
    pub items: usize,
    /// A trained adapter to compare with the base (repeatable; each one rewriter).
    #[arg(long = "adapter")]
    pub adapters: Vec<PathBuf>,
    #[arg(long, default_value = "config.toml")]
    pub config: PathBuf,
    #[arg(long, default_value = "runs/eval")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Candidates per round (the first greedy, the others sampled at `[rewriter] temperature`)
    /// and rounds (another round when none passes the shield), as `[rewriter]` serves them;
    /// 1 and 1 measure the model's greedy rewrite alone. The best candidate is measured.
    #[arg(long, default_value_t = 1)]
    pub candidates: usize,
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Leave the prompt-only base out (it takes as long as an adapter; compare with a saved
    /// evaluation of it on the same items through `compare-eval`). Needs an `--adapter`.
    #[arg(long)]
    pub skip_base: bool,
    #[arg(long, default_value_t = 80)]
    pub min_source_chars: usize,
    #[arg(long, default_value_t = 320)]
    pub max_source_chars: usize,
}

/// One item under one rewriter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemResult {
    pub id: String,
    pub text: String,
    pub target: std::collections::BTreeMap<crate::values::ValueId, f32>,
    pub rewrite: String,
    /// Why the screening refused the candidate (the output is then the original).
    pub rejected: Option<String>,
    pub l2_before: f32,
    pub l2: f32,
    pub cosine: f32,
    pub closed: f32,
    pub consistency: f32,
    pub shield_passed: bool,
    pub length_ratio: f32,
    pub generate_ms: f64,
    /// The same distances by the independent second scorer ([`LexicalScorer`]).
    pub second_l2_before: f32,
    pub second_l2: f32,
    pub second_closed: f32,
}

/// One rewriter's summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rewriter: String,
    pub items: usize,
    pub l2: f32,
    pub l2_before: f32,
    pub cosine: f32,
    /// Mean share of the original's distance to the target that the rewrite closed.
    pub closed: f32,
    pub consistency: f32,
    pub jsr: f32,
    pub jsr_strict: f32,
    /// Share of items where the serving shield would return the fallback.
    pub fallback: f32,
    pub rejected: f32,
    pub length_ratio: f32,
    pub generate_ms_p50: f64,
    pub generate_ms_p90: f64,
    /// Mean L2 and distance closed by the independent second scorer.
    pub second_l2_before: f32,
    pub second_l2: f32,
    pub second_closed: f32,
    /// Share of the rewrites the detector says moved toward the target (closed > 0) that the
    /// second scorer agrees moved toward it too.
    pub second_agrees: f32,
}

fn mean(v: impl Iterator<Item = f32>) -> f32 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f32 }
}

pub fn summarize(name: &str, r: &[ItemResult]) -> Summary {
    let share = |f: &dyn Fn(&ItemResult) -> bool| mean(r.iter().map(|x| f(x) as u8 as f32));
    let mut ms: Vec<f64> = r.iter().map(|x| x.generate_ms).collect();
    ms.sort_by(f64::total_cmp);
    Summary {
        rewriter: name.to_owned(),
        items: r.len(),
        l2: mean(r.iter().map(|x| x.l2)),
        l2_before: mean(r.iter().map(|x| x.l2_before)),
        cosine: mean(r.iter().map(|x| x.cosine)),
        closed: mean(r.iter().map(|x| x.closed)),
        consistency: mean(r.iter().map(|x| x.consistency)),
        jsr: share(&|x| x.l2 < JSR_L2 && x.consistency > JSR_CONSISTENCY),
        jsr_strict: share(&|x| x.consistency > STRICT_CONSISTENCY && x.closed >= STRICT_CLOSED),
        fallback: share(&|x| !x.shield_passed),
        rejected: share(&|x| x.rejected.is_some()),
        length_ratio: mean(r.iter().map(|x| x.length_ratio)),
        generate_ms_p50: ms.get(ms.len() / 2).copied().unwrap_or(0.0),
        generate_ms_p90: ms.get(ms.len() * 9 / 10).copied().unwrap_or(0.0),
        second_l2_before: mean(r.iter().map(|x| x.second_l2_before)),
        second_l2: mean(r.iter().map(|x| x.second_l2)),
        second_closed: mean(r.iter().map(|x| x.second_closed)),
        second_agrees: mean(
            r.iter()
                .filter(|x| x.closed > 0.0)
                .map(|x| (x.second_closed > 0.0) as u8 as f32),
        ),
    }
}

/// The markdown table.
pub fn table(rows: &[Summary]) -> String {
    let mut s = String::from(
        "| rewriter | items | L2 before | L2 after | cosine | distance closed | consistency | JSR (L2<0.8, cons>0.3) | strict (cons>0.6, closed>=50%) | shield fallback | rejected | length ratio | generate p50 / p90 | 2nd scorer: L2 before | L2 after | closed | agrees |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.1}% | {:.3} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.2} | {:.0} / {:.0} ms | {:.3} | {:.3} | {:.1}% | {:.0}% |\n",
            r.rewriter,
            r.items,
            r.l2_before,
            r.l2,
            r.cosine,
            100.0 * r.closed,
            r.consistency,
            100.0 * r.jsr,
            100.0 * r.jsr_strict,
            100.0 * r.fallback,
            100.0 * r.rejected,
            r.length_ratio,
            r.generate_ms_p50,
            r.generate_ms_p90,
            r.second_l2_before,
            r.second_l2,
            100.0 * r.second_closed,
            100.0 * r.second_agrees,
        ));
    }
    s
}

/// Held-out items: the split's premises with targets (seeded, as training makes them).
async fn held_out(
    o: &EvalOptions,
    scorer: &Scorer,
) -> anyhow::Result<Vec<(Item, crate::values::ValueVector)>> {
    let mut sources = data::touche_sources(
        &o.data,
        &o.split,
        o.min_source_chars,
        o.max_source_chars,
        o.seed,
    )?;
    sources.truncate(o.items);
    anyhow::ensure!(!sources.is_empty(), "no items in the {} split", o.split);
    let texts: Vec<String> = sources.iter().map(|(_, t)| t.clone()).collect();
    let (d, _) = scorer
        .detector
        .detect(&texts)
        .await
        .map_err(|e| anyhow::anyhow!("detector: {}", e.message))?;
    let mut rng = Rng::new(o.seed ^ 0x0000_E7A1_u64);
    Ok(sources
        .into_iter()
        .zip(d)
        .map(|((id, text), d)| {
            let target = data::make_target(&d.values, &mut rng);
            (Item { id, text, target }, d.values)
        })
        .collect())
}

/// Share of the distance closed, in [-1, 1]; 0 when the original was on target.
fn closed(before: f32, after: f32) -> f32 {
    if before > 0.0 {
        ((before - after) / before).max(-1.0)
    } else {
        0.0
    }
}

async fn evaluate(
    rewriter: &Rewriter,
    second: &LexicalScorer,
    items: &[(Item, crate::values::ValueVector)],
) -> anyhow::Result<Vec<ItemResult>> {
    let mut out = Vec::with_capacity(items.len());
    for (item, _) in items {
        let profile = item.profile();
        let (fits, _) = rewriter
            .scorer
            .fit(&profile, std::slice::from_ref(&item.text))
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let before = fits
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no detection"))?;
        let r = rewriter
            .rewrite_from(&profile, &item.text, None, before.clone())
            .await
            .map_err(|e| anyhow::anyhow!("rewrite: {}", e.message))?;
        // The candidate the rewriter chose (the best passing one, else the best scored one).
        let c = r
            .best
            .and_then(|i| r.candidates.get(i))
            .or(r.candidates.first());
        let rejected = c.and_then(|c| c.rejected.map(|j| format!("{j:?}")));
        let (rewrite, l2, cosine, consistency) =
            match c.and_then(|c| c.score.as_ref().map(|s| (c, s))) {
                // Integrity checks facts both ways (nothing lost, nothing invented).
                Some((c, s)) => (c.text.clone(), s.fit.distance, s.fit.cosine, s.integrity),
                // Nothing usable: the proxy returns the original.
                None => (item.text.clone(), before.distance, before.cosine, 1.0),
            };
        // The second scorer reads the original differently, so its target is its own reading
        // of the original shifted as the detector's target shifts the detector's reading.
        let second_before = second.values(&item.text);
        let second_profile = Item {
            id: item.id.clone(),
            text: item.text.clone(),
            target: item
                .target
                .iter()
                .map(|(v, t)| {
                    let shift = t - before.values.get(*v);
                    (*v, (second_before.get(*v) + shift).clamp(0.0, 1.0))
                })
                .collect(),
        }
        .profile();
        let second_l2_before = second_profile.distance(&second_before);
        let second_l2 = second_profile.distance(&second.values(&rewrite));
        out.push(ItemResult {
            closed: closed(before.distance, l2),
            second_l2_before,
            second_l2,
            second_closed: closed(second_l2_before, second_l2),
            id: item.id.clone(),
            text: item.text.clone(),
            target: item.target.clone(),
            length_ratio: rewrite.chars().count() as f32 / item.text.chars().count().max(1) as f32,
            rewrite,
            rejected,
            l2_before: before.distance,
            l2,
            cosine,
            consistency,
            shield_passed: r.decision == Decision::Rewritten,
            generate_ms: r.generate_ms,
        });
    }
    Ok(out)
}

pub fn run(o: &EvalOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        !(o.skip_base && o.adapters.is_empty()),
        "--skip-base needs at least one --adapter to evaluate"
    );
    let config = Config::load(&o.config, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", o.config.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!("training the second scorer (words) on the training split ...");
    let second = LexicalScorer::train(&o.data)?;
    eprintln!(
        "second scorer: validation macro-F1 {:.3} over the 20 categories, {:.3} over the 10 values",
        second.report.macro_f1_categories, second.report.macro_f1_values
    );
    rt.block_on(async {
        let models = crate::server::ValueModels::load(&config.models, crate::models::service::ServiceStats::default()).await?;
        let scorer = || Scorer {
            detector: models.detector.clone(),
            encoder: models.semantic.clone(),
            value_weight: config.rewriter.value_weight,
            integrity_floor: config.rewriter.min_integrity,
        };
        let items = held_out(o, &scorer()).await?;
        eprintln!("{} held-out items from the {} split", items.len(), o.split);
        let mut rewriters: Vec<(String, Option<PathBuf>)> = Vec::new();
        if !o.skip_base {
            rewriters.push(("base (prompt only)".into(), None));
        }
        for a in &o.adapters {
            rewriters.push((format!("GRPO adapter {}", a.display()), Some(a.clone())));
        }
        let mut summaries = Vec::new();
        let mut details = Vec::new();
        let mut all = Vec::new();
        for (name, adapter) in rewriters {
            let mut llm = config.llm.clone();
            llm.adapter = adapter.map(|a| a.display().to_string());
            let engine = Arc::new(LlmEngine::load(&llm, LlmStats::default()).await?);
            let mut rc = config.rewriter.clone();
            rc.candidates = o.candidates;
            rc.rounds = o.rounds;
            rc.validate().map_err(|e| anyhow::anyhow!("--candidates/--rounds: {e}"))?;
            let rewriter = Rewriter {
                backend: RewriteBackend::Local(engine),
                scorer: scorer(),
                config: rc,
            };
            eprintln!("evaluating {name} ...");
            let results = evaluate(&rewriter, &second, &items).await?;
            let s = summarize(&name, &results);
            eprintln!("{}", table(std::slice::from_ref(&s)));
            summaries.push(s);
            details.push(json!({"rewriter": name, "items": results}));
            all.push((name, results));
        }
        let paired = super::compare::against_first(&all, o.seed)?;
        std::fs::create_dir_all(&o.out)?;
        let mut md = format!(
            "Held-out: {} items of the {} split ({}..{} characters, seed {}); targets: the detected vector shifted on 1-2 values by 0.2/0.35/0.5. Consistency: the serving integrity, encoder similarity x the smaller of the share of the original's facts kept and the share of the rewrite's facts the original holds. {} per rewriter (the first greedy), the serving prompt and screening; the chosen candidate is measured; a rejected one counts as the original. Second scorer: a bag-of-words logistic regression (hashed word unigrams and bigrams) trained on {} arguments of the training split, sharing nothing with the detector (validation macro-F1 {:.3} over the 20 categories, {:.3} over the 10 values); its target is its own reading of the original shifted as the detector's target shifts the detector's reading; `agrees`: share of the rewrites the detector says moved toward the target that it says moved toward it too.\n\n{}",
            items.len(), o.split, o.min_source_chars, o.max_source_chars, o.seed,
            if o.candidates == 1 && o.rounds == 1 { "One candidate".to_owned() } else { format!("Up to {} rounds of {} candidates (another round only when none passes the shield)", o.rounds, o.candidates) },
            second.trained_on, second.report.macro_f1_categories, second.report.macro_f1_values, table(&summaries)
        );
        if !paired.is_empty() {
            md.push_str(&format!("\nPaired differences from the base on the same items (mean per item, 95% paired-bootstrap interval of {} resamples, seed {}; bold where the interval leaves 0 out; pt = percentage points):\n\n{}", super::compare::DRAWS, o.seed, super::compare::table(&paired)));
        }
        std::fs::write(o.out.join("eval.md"), &md)?;
        std::fs::write(
            o.out.join("eval.json"),
            serde_json::to_vec_pretty(&json!({"summaries": summaries, "paired": paired, "details": details, "second_scorer": {"kind": "bag-of-words logistic regression (hashed unigrams and bigrams)", "trained_on": second.trained_on, "validation": second.report}}))?,
        )?;
        println!("{md}");
        Ok::<(), anyhow::Error>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(l2_before: f32, l2: f32, consistency: f32, passed: bool) -> ItemResult {
        ItemResult {
            id: "x".into(),
            text: "t".into(),
            target: Default::default(),
            rewrite: "u".into(),
            rejected: None,
            l2_before,
            l2,
            cosine: 0.5,
            closed: (l2_before - l2) / l2_before,
            consistency,
            shield_passed: passed,
            length_ratio: 1.0,
            generate_ms: 10.0,
            second_l2_before: l2_before,
            second_l2: if passed { l2 } else { l2_before + 0.1 },
            second_closed: if passed {
                (l2_before - l2) / l2_before
            } else {
                -0.1
            },
        }
    }

    #[test]
    fn joint_success_follows_the_paper_and_the_stricter_rule() {
        let rows = [
            r(0.5, 0.2, 0.9, true),   // both
            r(0.5, 0.45, 0.9, true),  // JSR only: closed 10%
            r(0.9, 0.85, 0.9, false), // neither: L2 >= 0.8, closed < 50%
            r(0.5, 0.1, 0.2, false),  // neither: inconsistent
        ];
        let s = summarize("t", &rows);
        assert_eq!(s.items, 4);
        assert!((s.jsr - 0.5).abs() < 1e-6, "{s:?}");
        assert!((s.jsr_strict - 0.25).abs() < 1e-6, "{s:?}");
        assert!((s.fallback - 0.5).abs() < 1e-6);
        // The detector says all four moved toward the target; the second scorer agrees on two.
        assert!((s.second_agrees - 0.5).abs() < 1e-6, "{s:?}");
        assert!(table(&[s]).contains("| t | 4 |"));
    }
}
