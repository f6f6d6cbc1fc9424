//! `train-rewriter` on the real SmolLM2 base: a warm start on the shield's picks and a few GRPO
//! steps write a loadable adapter, a card and a log; `--resume` continues; the proxy serves the
//! adapter (`[llm] adapter`), and its token log-probabilities differ from the base's; `eval-rewriter` compares the base and the adapter on
//! the same held-out items. The same for the sentence editor's task (`--task edit`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::key_hash;
use support::proxy::Proxy;
use support::touche_dir as data_dir;

/// `steps` GRPO steps of `task` (whole: after a small warm start on 2 items unless resuming).
fn train(task: &str, out: &std::path::Path, steps: usize, resume: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_visa-proxy"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["train-rewriter", "--task", task])
        .args(["--config", "config.toml", "--data"])
        .arg(data_dir())
        .arg("--out")
        .arg(out)
        .args(["--steps", &steps.to_string()])
        .args([
            "--group",
            "4",
            "--max-new-tokens",
            "24",
            "--checkpoint-every",
            "1",
        ])
        .args(["--max-source-chars", "160"]);
    if resume {
        cmd.arg("--resume");
    } else if task == "whole" {
        cmd.args([
            "--warm-start",
            "2",
            "--warm-start-samples",
            "3",
            "--warm-start-epochs",
            "1",
        ]);
    }
    cmd.output().unwrap()
}

fn log_lines(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_writes_a_resumable_adapter_that_the_proxy_serves() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = train("whole", &out, 2, false);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("step 2/2"), "progress lines: {stderr}");
    let log = log_lines(&out);
    assert_eq!(log.len(), 2);
    for (k, line) in log.iter().enumerate() {
        assert_eq!(line["step"], k + 1);
        // value_weight x progress (in [-1, 1]) + (1 - value_weight) x integrity (in [0, 1]).
        let r = line["reward_mean"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&r), "{line}");
        let p = line["components"]["progress"].as_f64();
        assert!(p.is_none_or(|p| (-1.0..=1.0).contains(&p)), "{line}");
        assert!(line["kl"].as_f64().unwrap() >= 0.0, "{line}");
        assert!(line["completion_tokens"].as_u64().unwrap() > 0, "{line}");
        assert!(line["components"]["rejected"].is_number(), "{line}");
    }
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter.json")).unwrap()).unwrap();
    assert_eq!(card["steps"], 2);
    assert_eq!(card["finished"], true);
    assert_eq!(card["lora"]["rank"], 8);
    assert_eq!(card["base_sha256"].as_str().unwrap().len(), 64);
    // `--device auto` trains on the CPU unless built with `cuda` and a GPU is present.
    assert_eq!(card["options"]["device"], "auto");
    if cfg!(feature = "cuda") {
        assert!(
            matches!(card["device"].as_str(), Some("cpu" | "cuda:0")),
            "{card}"
        );
    } else {
        assert_eq!(card["device"], "cpu");
    }
    assert_eq!(card["reward"]["per_step"].as_array().unwrap().len(), 2);

    // The warm start sampled 3 rewrites of 2 items and kept only ones the shield accepts.
    assert!(stderr.contains("warm start 2/2"), "{stderr}");
    let warm = &card["warm_start"];
    assert_eq!(warm["items"], 2, "{card}");
    let kept: Vec<Value> = std::fs::read_to_string(out.join("warm.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(warm["kept"], kept.len(), "{card}");
    for k in &kept {
        assert!(k["progress"].as_f64().unwrap() > 0.0, "{k}");
        assert!(k["integrity"].as_f64().unwrap() >= 0.6, "{k}");
        assert_ne!(k["rewrite"], k["original"], "{k}");
    }
    // One step per batch of 2 kept rewrites, one epoch.
    assert_eq!(
        warm["loss_per_step"].as_array().unwrap().len(),
        kept.len().div_ceil(2),
        "{card}"
    );

    // The checkpoint keeps the optimizer's moments, so --resume continues the same run.
    assert!(out.join("optimizer.safetensors").is_file());

    // Resume: one more step, appended to the same log.
    let run = train("whole", &out, 3, true);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("resuming at step 2"), "{stderr}");
    assert!(
        !stderr.contains("warm start 1/"),
        "the warm start ran again: {stderr}"
    );
    assert!(!stderr.contains("zero moments"), "{stderr}");
    let log = log_lines(&out);
    assert_eq!(log.len(), 3);
    assert_eq!(log[2]["step"], 3);

    let adapter = out.join("adapter.safetensors");
    served_and_differs(&out, &adapter).await;

    // eval-rewriter: the base and the adapter side by side on the same held-out items.
    let eval_dir = dir.path().join("eval");
    eval_rewriter(&adapter, &eval_dir, &[]);
    let md = std::fs::read_to_string(eval_dir.join("eval.md")).unwrap();
    assert!(md.contains("| base whole-text (1x1) | 2 |"), "{md}");
    assert!(md.contains("| GRPO adapter "), "{md}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("single/eval.json")).unwrap())
            .unwrap();
    let rows = report["summaries"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for k in ["jsr", "jsr_strict", "fallback", "consistency"] {
            let x = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{k}: {r}");
        }
        assert!(r["l2_before"].as_f64().unwrap() > 0.0, "{r}");
        // The independent second scorer measured the same items.
        assert!(r["second_l2_before"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["second_closed"].as_f64().unwrap() >= -1.0, "{r}");
    }
    // The second scorer is a real classifier of the data, reported with its validation F1.
    let f1 = report["second_scorer"]["validation"]["macro_f1_values"]
        .as_f64()
        .unwrap();
    assert!(f1 > 0.3, "second scorer macro-F1 over the values: {f1}");
    assert!(md.contains("2nd scorer"), "{md}");
    // Both rewriters saw the same items.
    let ids = |k: usize| -> Vec<String> {
        report["details"][k]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(0), ids(1));
    // The paired comparison with the base: the same six measures in eval.json and eval.md,
    // each mean inside its interval, and compare-eval reproducing it from the saved file.
    let paired = report["paired"].as_array().unwrap();
    assert_eq!(paired.len(), 1, "{report}");
    let diffs = paired[0]["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 6);
    for d in diffs {
        let (m, lo, hi) = (
            d["mean"].as_f64().unwrap(),
            d["low"].as_f64().unwrap(),
            d["high"].as_f64().unwrap(),
        );
        assert!(lo <= m + 1e-6 && m <= hi + 1e-6, "{d}");
    }
    assert!(md.contains("Paired differences from the first row"), "{md}");
    let run = support::run_ok(
        Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
            .arg("compare-eval")
            .arg(eval_dir.join("single/eval.json")),
    );
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains(" vs base whole-text (1x1) | 2 |"), "{table}");
    assert!(md.contains(table.trim()), "{md}\n---\n{table}");

    // --skip-base evaluates the adapter alone, on the same items; compare-eval against the
    // first run's base gives the paired row the first run computed itself.
    let alone_dir = dir.path().join("eval-alone");
    eval_rewriter(&adapter, &alone_dir, &["--skip-base"]);
    let alone: Value =
        serde_json::from_str(&std::fs::read_to_string(alone_dir.join("single/eval.json")).unwrap())
            .unwrap();
    assert_eq!(alone["summaries"].as_array().unwrap().len(), 1, "{alone}");
    let rewrites = |r: &Value, k: usize| -> Vec<(String, String)> {
        r["details"][k]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].to_string(), i["rewrite"].to_string()))
            .collect()
    };
    assert_eq!(rewrites(&alone, 0), rewrites(&report, 1));
    let run = support::run_ok(
        Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
            .arg("compare-eval")
            .arg(eval_dir.join("single/eval.json"))
            .arg(alone_dir.join("single/eval.json")),
    );
    let across = String::from_utf8_lossy(&run.stdout);
    let row = |t: &str| -> String {
        let line = t
            .lines()
            .rfind(|l| l.starts_with("| GRPO adapter"))
            .unwrap_or_default()
            .to_owned();
        // The numbers after the names (the names carry the file).
        line.split(" | 2 | ").nth(1).unwrap_or_default().to_owned()
    };
    assert!(!row(&across).is_empty(), "{across}");
    assert_eq!(row(&across), row(&table), "{across}\n---\n{table}");
    // Without an adapter there is nothing to evaluate.
    let out = Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
        .args(["eval-rewriter", "--skip-base", "--data"])
        .arg(data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--skip-base needs at least one --adapter"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentence_editor_trains_on_its_own_tasks_resumes_and_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("edit");
    let run = train("edit", &out, 2, false);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // The items are the editor's own plans: sentences to lower or raise a value in.
    assert!(stderr.contains("edit tasks: "), "{stderr}");
    assert!(stderr.contains("step 2/2"), "{stderr}");
    let log = log_lines(&out);
    assert_eq!(log.len(), 2);
    for line in &log {
        let c = &line["components"];
        let rejected = c["rejected"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rejected), "{line}");
        let r = line["reward_mean"].as_f64().unwrap();
        // value_weight x progress (in [-1, 1]) + (1 - value_weight) x integrity, + the bonus
        // for an edit serving would accept; 0 for a rejected one.
        assert!((-1.0..=1.25).contains(&r), "{line}");
        if rejected < 1.0 {
            for k in ["progress", "sentence_progress", "whole_progress"] {
                let x = c[k].as_f64().unwrap();
                assert!((-1.0..=1.0).contains(&x), "{k}: {line}");
            }
            for k in ["integrity", "accepted"] {
                let x = c[k].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&x), "{k}: {line}");
            }
        }
        // Edits are one sentence: the room serving gives them, at most 24 tokens here.
        assert!(
            line["completion_tokens"].as_u64().unwrap() <= 4 * 24,
            "{line}"
        );
    }
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter.json")).unwrap()).unwrap();
    assert_eq!(card["data"]["task"], "edit", "{card}");
    assert_eq!(card["options"]["task"], "edit", "{card}");
    assert!(
        card["reward"]["definition"]
            .as_str()
            .unwrap()
            .contains("per-sentence checks"),
        "{card}"
    );
    assert!(card["warm_start"].is_null(), "{card}");

    // Resume: one more step on the same run.
    let run = train("edit", &out, 3, true);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("resuming at step 2"), "{stderr}");
    assert!(!stderr.contains("zero moments"), "{stderr}");
    assert_eq!(log_lines(&out).len(), 3);

    // The warm start belongs to the whole-text task.
    let bad = Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "train-rewriter",
            "--task",
            "edit",
            "--warm-start",
            "2",
            "--data",
        ])
        .arg(data_dir())
        .arg("--out")
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--warm-start is for --task whole"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let adapter = out.join("adapter.safetensors");
    served_and_differs(&out, &adapter).await;

    // eval-rewriter: the prompt-only editor and the trained one, with one model candidate per
    // site, on the same held-out items.
    let eval_dir = dir.path().join("eval");
    eval_rewriter(
        &adapter,
        &eval_dir,
        &["--editor", "edits", "--edit-model-candidates", "1"],
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("single/eval.json")).unwrap())
            .unwrap();
    let rows = report["summaries"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    assert!(
        rows[0]["rewriter"]
            .as_str()
            .unwrap()
            .starts_with("base sentence edits (1 model candidates per site)"),
        "{report}"
    );
    assert!(
        rows[1]["rewriter"]
            .as_str()
            .unwrap()
            .starts_with("GRPO adapter"),
        "{report}"
    );
    for r in rows {
        assert!(r["second_closed"].as_f64().unwrap() >= -1.0, "{r}");
    }
    assert_eq!(report["paired"].as_array().unwrap().len(), 1, "{report}");

    // --kind edit: one greedy model edit per held-out premise, as training poses them, by the
    // base and by the adapter, on the same tasks.
    let tasks_dir = dir.path().join("eval-edit");
    eval_rewriter(&adapter, &tasks_dir, &["--kind", "edit"]);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(tasks_dir.join("edit/eval.json")).unwrap())
            .unwrap();
    let rows = report["summaries"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    assert_eq!(
        rows[0]["rewriter"], "base single edits (greedy)",
        "{report}"
    );
    let details = report["details"].as_array().unwrap();
    let tasks = |k: usize| -> Vec<(String, String)> {
        details[k]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].to_string(), i["applied"][0].to_string()))
            .collect()
    };
    assert_eq!(tasks(0).len(), 2, "{report}");
    assert_eq!(tasks(0), tasks(1));
    for i in details[0]["items"].as_array().unwrap() {
        assert_eq!(i["kind"], "edit", "{i}");
        // A rejected edit counts as the original; a kept one is the text with one sentence
        // changed.
        if i["rejected"].is_null() {
            assert_ne!(i["rewrite"], i["text"], "{i}");
        } else {
            assert_eq!(i["rewrite"], i["text"], "{i}");
        }
    }
}

/// The proxy merges `adapter` (of the run in `out`) into the base at start and answers
/// through it: on the same prompt, greedy, its token log-probabilities are not the base's.
async fn served_and_differs(out: &std::path::Path, adapter: &std::path::Path) {
    let config = format!(
        r#"
[llm]
adapter = "{adapter}"
max_tokens = 24

[[upstreams]]
name = "local"
kind = "local"

[[tenants]]
id = "home"
api_key_sha256 = ["{home}"]
upstreams = ["local"]
"#,
        adapter = adapter.display(),
        home = key_hash("sk-home"),
    );
    let proxy = Proxy::start(&config, &[]);
    assert!(
        out.join("adapter.merged.gguf").is_file(),
        "{}",
        proxy.stderr()
    );
    let adapted = greedy_logprobs(&proxy).await;
    drop(proxy);
    // The served model is the trained one: on the same prompt, greedy, the base model's token
    // log-probabilities are not the adapter's.
    let base_config = config.replace(&format!("adapter = \"{}\"\n", adapter.display()), "");
    assert!(!base_config.contains("adapter ="), "{base_config}");
    let proxy = Proxy::start(&base_config, &[]);
    let base = greedy_logprobs(&proxy).await;
    drop(proxy);
    let differs = adapted.len() != base.len()
        || adapted
            .iter()
            .zip(&base)
            .any(|((ta, la), (tb, lb))| ta != tb || (la - lb).abs() > 1e-4);
    assert!(
        differs,
        "the adapter's answer is the base's, token for token: {adapted:?}"
    );
}

/// A greedy answer to one prompt through the proxy's local upstream, as (token, logprob)
/// pairs; the tokens spell the answer's text.
async fn greedy_logprobs(proxy: &Proxy) -> Vec<(String, f64)> {
    let r = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-home")
        .json(
            &json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 12,
                      "logprobs": true, "top_logprobs": 2,
                      "messages": [{"role": "user", "content": "Say hello."}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let choice = &v["choices"][0];
    let text = choice["message"]["content"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{v}");
    let tokens: Vec<(String, f64)> = choice["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs: {v}"))
        .iter()
        .map(|t| {
            let lp = t["logprob"].as_f64().unwrap();
            assert!(lp <= 0.0, "{t}");
            assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2, "{t}");
            (t["token"].as_str().unwrap().to_owned(), lp)
        })
        .collect();
    let spelled: String = tokens.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(spelled.trim(), text.trim(), "{v}");
    // Streamed, the same tokens ride on the chunks that carry their text.
    let raw = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-home")
        .json(
            &json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 12,
                      "logprobs": true, "stream": true,
                      "messages": [{"role": "user", "content": "Say hello."}]}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let streamed: Vec<String> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .flat_map(|d| {
            let c: Value = serde_json::from_str(d).unwrap();
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|t| t["token"].as_str().unwrap().to_owned())
        .collect();
    let json_tokens: Vec<String> = tokens.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(streamed, json_tokens, "{raw}");
    tokens
}

/// `eval-rewriter` on 2 held-out items with the base config, `adapter`, and `extra` options
/// (single premises and whole-text rewrites unless `extra` names a `--kind` or an `--editor`).
fn eval_rewriter(adapter: &std::path::Path, out: &std::path::Path, extra: &[&str]) {
    let default = |name: &'static str, value: &'static str| -> Vec<&'static str> {
        if extra.contains(&name) {
            Vec::new()
        } else {
            vec![name, value]
        }
    };
    support::run_ok(
        Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["eval-rewriter", "--config", "config.toml", "--items", "2"])
            .args(default("--kind", "single"))
            .args(default("--editor", "whole"))
            .args(extra)
            .arg("--data")
            .arg(data_dir())
            .arg("--adapter")
            .arg(adapter)
            .arg("--out")
            .arg(out),
    );
}
