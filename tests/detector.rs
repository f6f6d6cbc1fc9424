//! The detector's commands: training reproduces the committed head, evaluation reports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod support;

use std::process::Command;

use serde_json::Value;
use support::touche_dir as data_dir;

fn card(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `train-detector` from scratch scores within a margin of the committed head on validation.
#[test]
fn training_reproduces_the_committed_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("head.safetensors");
    support::run_ok(
        Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["train-detector", "--data"])
            .arg(data_dir())
            .arg("--out")
            .arg(&out),
    );
    let fresh = card(&out.with_extension("json"));
    let committed = card(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/detector/head.json"
    )));
    let f = |c: &Value, k: &str| c["validation"][k].as_f64().unwrap();
    for k in ["macro_f1_categories", "macro_f1_values"] {
        let (a, b) = (f(&fresh, k), f(&committed, k));
        // Fine-tuning runs multithreaded float reductions, so runs differ slightly.
        assert!(
            (a - b).abs() <= 0.015,
            "{k}: fresh {a:.4}, committed {b:.4}"
        );
    }
    assert_eq!(
        fresh["encoder"]["weights_sha256"],
        committed["encoder"]["weights_sha256"]
    );
    assert_eq!(fresh["mapping"], "variantA_pyvalues");
    assert_eq!(fresh["thresholds"].as_object().unwrap().len(), 20);
    assert_eq!(
        fresh["encoder"]["fine_tuned"]["layers"],
        committed["encoder"]["fine_tuned"]["layers"]
    );
    assert!(
        out.with_extension("encoder.safetensors").exists(),
        "the fine-tuned layers are written next to the head"
    );
}

/// `eval-detector` reads a split in the data set's format and prints the metrics.
#[test]
fn evaluation_prints_metrics_for_a_split() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["arguments", "labels"] {
        let text =
            std::fs::read_to_string(data_dir().join(format!("{kind}-validation.tsv"))).unwrap();
        let head: Vec<&str> = text.lines().take(41).collect();
        std::fs::write(
            dir.path().join(format!("{kind}-sample.tsv")),
            head.join("\n") + "\n",
        )
        .unwrap();
    }
    let run = Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["eval-detector", "--split", "sample", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("split sample: 40 arguments"), "{stdout}");
    assert!(
        stdout.contains("macro-F1 over the 20 categories:"),
        "{stdout}"
    );
    assert!(stdout.contains("macro-F1 over the 10 values:"), "{stdout}");
    assert!(stdout.contains("Universalism: concern"), "{stdout}");
    assert!(
        stdout.contains("latency, one 200-token text: p50"),
        "{stdout}"
    );
}
