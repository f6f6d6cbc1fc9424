//! The sentence editor's tasks for GRPO (`train-rewriter --task edit`): each item is one edit
//! serving would ask of the model (one sentence of a Touché premise, with the sentence before
//! it, to be rewritten with less or more of a value; with insertions on, one new sentence), built
//! by the serving editor's own assessment and prompts; the reward is serving's edit reward
//! (the value moved in the sentence and in the whole text, integrity with facts both ways, the
//! per-sentence checks serving applies) and 0 for what serving's screening rejects.

use std::ops::Range;

use serde::Serialize;

use super::data::{self, Item};
use super::sample::Rng;
use crate::edit::{Assessment, EditKind, Editor, Scope, Site, SiteKind, SitePrompt, Source};
use crate::edit::{candidate, plan, screen};
use crate::values::profile::Profile;
use crate::values::sentences::splice;

/// Added to the reward of an edit that passes every check serving applies to a candidate
/// (value moved by the minimum or into the band, facts kept, similarity floor, no other value
/// harmed): serving keeps only such edits, so among edits that move alike it prefers those.
pub const ACCEPTED_BONUS: f32 = 0.25;

/// One edit task.
pub struct EditTask {
    pub id: String,
    pub text: String,
    /// Target scores of the constrained values (`profile` is made from them).
    pub target: std::collections::BTreeMap<crate::values::ValueId, f32>,
    pub profile: Profile,
    pub assessed: Assessment,
    /// The text's embedding, then each sentence's (what `Editor::judge` reads).
    pub semantic: Vec<Vec<f32>>,
    pub site: Site,
    pub prompt: SitePrompt,
    /// What an edit replaces: the sentence's body (a rewrite) or an empty range after it (an
    /// insertion).
    pub range: Range<usize>,
}

impl EditTask {
    /// The task in one line, for logs.
    pub fn describe(&self) -> String {
        let dir = match self.site.kind {
            SiteKind::Lower => "lower",
            SiteKind::Raise => "raise",
        };
        let kind = crate::edit::serde_name(&self.prompt.kind);
        let values: Vec<String> = self.site.values.iter().map(|v| v.to_string()).collect();
        format!("{} {kind} {dir} {}", self.id, values.join("+"))
    }

    /// The answer with `edit` in place of the task's range.
    pub fn apply(&self, edit: &str) -> String {
        let replacement = match self.prompt.kind {
            EditKind::Inserted => format!(" {edit}"),
            _ => edit.to_owned(),
        };
        splice(&self.text, &[(self.range.clone(), replacement)])
    }
}

/// Edit tasks from `sources` (id, text): targets made as for whole-text training (the detected
/// vector shifted on one or two values), the serving editor's plan for each, and its first
/// site's model prompt (one of them at random where a raise site has two). Sources whose plan
/// has no site with a sentence give no task.
pub async fn tasks(
    editor: &Editor,
    sources: Vec<(String, String)>,
    seed: u64,
    need: usize,
) -> anyhow::Result<Vec<EditTask>> {
    let mut rng = Rng::new(seed ^ 0x0ED1_7A5C);
    let mut out = Vec::new();
    for (id, text) in sources {
        if out.len() >= need {
            break;
        }
        let (detected, _) = editor
            .scorer
            .detector
            .detect(std::slice::from_ref(&text))
            .await
            .map_err(|e| anyhow::anyhow!("detector: {}", e.message))?;
        let Some(d) = detected.into_iter().next() else {
            continue;
        };
        let item = Item {
            id: id.clone(),
            text: text.clone(),
            target: data::make_target(&d.values, &mut rng),
        };
        let profile = item.profile();
        let assessed = editor
            .assess(&profile, &text, None, Scope::Full)
            .await
            .map_err(|e| anyhow::anyhow!("assess: {}", e.message))?;
        let Some(site) = assessed
            .sites
            .iter()
            .find(|s| s.sentence.is_some())
            .cloned()
        else {
            continue;
        };
        let mut prompts = editor.site_prompts(&site, &assessed.units, &text, None, Scope::Full);
        if prompts.is_empty() {
            continue;
        }
        let k = ((rng.next_f64() * prompts.len() as f64) as usize).min(prompts.len() - 1);
        let prompt = prompts.swap_remove(k);
        let Some(i) = site.sentence else { continue };
        let unit = assessed.units[i];
        let range = match prompt.kind {
            EditKind::Inserted => unit.end..unit.end,
            _ => unit.body_range(),
        };
        let semantic = {
            let mut all = vec![text.clone()];
            all.extend(assessed.units.iter().map(|u| u.body(&text).to_owned()));
            editor
                .scorer
                .encoder
                .embed(all)
                .await
                .map_err(|e| anyhow::anyhow!("encoder: {}", e.message))?
                .vectors
        };
        out.push(EditTask {
            id,
            text,
            target: item.target,
            profile,
            assessed,
            semantic,
            site,
            prompt,
            range,
        });
    }
    Ok(out)
}

/// One completion's reward and its parts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EditReward {
    pub reward: f32,
    /// Serving's screening rejected it (reward 0).
    pub rejected: bool,
    /// It passes serving's per-sentence checks.
    pub accepted: bool,
    /// Mean of the two progresses below, in [-1, 1].
    pub progress: f32,
    /// The edited sentence's (an insertion: the new sentence's) share of the way to the
    /// band, as serving's checks measure it, in [-1, 1].
    pub sentence_progress: f32,
    /// The whole text's share of its distance to the target closed, in [-1, 1].
    pub whole_progress: f32,
    /// A rewrite: its similarity to the sentence x the facts kept both ways; an insertion:
    /// the whole text's integrity.
    pub integrity: f32,
    /// The whole text's weighted distance to the target with the edit in place.
    pub distance: f32,
    pub cosine: f32,
    /// Why serving's screening rejected it.
    pub rejection: Option<String>,
    /// The edit as screened.
    pub text: String,
}

/// A raw completion cut where serving's generation stops (its first line break): the text,
/// and whether it ended (a line break or a stop token rather than the length limit).
pub fn first_line(raw: &str, finished: bool) -> (String, bool) {
    match raw.find('\n') {
        Some(k) => (raw[..k].to_owned(), true),
        None => (raw.to_owned(), finished),
    }
}

/// The rewards of a group's completions (raw text, finished) for `task`.
pub async fn rewards(
    editor: &Editor,
    task: &EditTask,
    completions: &[(String, bool)],
) -> anyhow::Result<Vec<EditReward>> {
    let vw = editor.scorer.value_weight;
    let floor = editor.scorer.integrity_floor;
    let mut out: Vec<EditReward> = Vec::with_capacity(completions.len());
    let mut kept = Vec::new();
    for (raw, finished) in completions {
        let (raw, finished) = first_line(raw, *finished);
        let (text, rejected) = match task.prompt.kind {
            EditKind::Inserted => screen::screen_insertion(&raw, finished),
            _ => screen::screen_rewrite(
                task.prompt.original.as_deref().unwrap_or(""),
                &raw,
                finished,
            ),
        };
        if rejected.is_none() {
            kept.push(out.len());
        }
        out.push(EditReward {
            rejected: rejected.is_some(),
            rejection: rejected.map(|r| crate::edit::serde_name(&r)),
            text,
            ..EditReward::default()
        });
    }
    if kept.is_empty() {
        return Ok(out);
    }
    let err = |e: visa_models::error::ModelError| anyhow::anyhow!("scorer: {}", e.message);
    let items: Vec<(Option<String>, String)> = kept
        .iter()
        .map(|&j| (task.prompt.original.clone(), out[j].text.clone()))
        .collect();
    let scores = editor.scorer.score_edits(&items).await.map_err(err)?;
    let whole_texts: Vec<String> = kept.iter().map(|&j| task.apply(&out[j].text)).collect();
    let whole = editor
        .scorer
        .score(&task.profile, &task.text, &whole_texts)
        .await
        .map_err(err)?;
    let aggregate = task.assessed.original.values;
    let band = |v| plan::band(&task.profile, v).unwrap_or((0.0, 1.0));
    for ((&j, s), w) in kept.iter().zip(scores).zip(whole.candidates) {
        let r = &mut out[j];
        let values = &task.site.values;
        r.sentence_progress = match task.site.kind {
            SiteKind::Lower => {
                let i = task.site.sentence.unwrap_or(0);
                let old = task.assessed.vectors.get(i).copied().unwrap_or_default();
                values
                    .iter()
                    .map(|v| {
                        let (o, n, hi) = (old.get(*v), s.values.get(*v), band(*v).1);
                        ((o - n) / (o - hi).max(0.05)).clamp(-1.0, 1.0)
                    })
                    .sum::<f32>()
                    / values.len().max(1) as f32
            }
            SiteKind::Raise => {
                let v = values[0];
                let (cur, new, lo) = (aggregate.get(v), s.values.get(v), band(v).0);
                ((new - cur) / (lo - cur).max(0.05)).clamp(-1.0, 1.0)
            }
        };
        r.whole_progress = w.progress;
        r.distance = w.fit.distance;
        r.cosine = w.fit.cosine;
        r.progress = 0.5 * (r.sentence_progress + r.whole_progress);
        r.integrity = match task.prompt.kind {
            EditKind::Inserted => w.integrity,
            _ => s.similarity.unwrap_or(0.0) * s.facts.fraction(),
        };
        let mut c = candidate(task.prompt.kind, Source::Model, r.text.clone());
        c.score = Some(s);
        r.accepted = editor
            .judge(
                &task.profile,
                &task.text,
                &task.assessed,
                &task.semantic,
                &task.site,
                &c,
            )
            .is_ok();
        r.reward = crate::score::reward(vw, r.progress, r.integrity, floor)
            + if r.accepted { ACCEPTED_BONUS } else { 0.0 };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_ends_at_its_first_line_break_as_serving_stops_it() {
        assert_eq!(first_line("A b.\nmore", false), ("A b.".to_owned(), true));
        assert_eq!(first_line("A b.", true), ("A b.".to_owned(), true));
        assert_eq!(first_line("A b", false), ("A b".to_owned(), false));
    }
}
