//! Robustness through the running proxy with the real value models and a mock upstream.
//!
//! The fuzz run: the HTTP API fuzzed from its own OpenAPI document with schemathesis (PyPI,
//! installed by scripts/setup-python.sh) with a tenant whose profile rewrites: as the admin,
//! as a tenant and without a key, no answer is a 5xx, every error is OpenAI-shaped
//! (tests/fuzz/hooks.py), and status codes, content types and bodies match the document.
//! Bounded in examples per operation, with a fixed seed, so a run is repeatable and stops by
//! itself.
//!
//! The load run: many tenants with profiles streaming at once, clients that disconnect
//! mid-stream, the upstream failing in each way the proxy handles; afterwards nothing is left
//! in flight, every upstream stream was ended, and the proxy's open files, threads and memory
//! are back near where they were (it prints RSS before and after).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::key_hash;
use support::mock_upstream::MockUpstream;
use support::proxy::Proxy;

const ADMIN: &str = "admin-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzing_the_api_from_its_openapi_document_finds_no_server_error_or_odd_error() {
    let python = std::env::var("VISA_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_owned());
    let schemathesis = std::path::Path::new(&python).with_file_name("schemathesis");
    assert!(
        schemathesis.exists(),
        "no schemathesis at {}: run scripts/setup-python.sh",
        schemathesis.display()
    );
    let mock = MockUpstream::start().await;
    let config = format!(
        r#"
[llm]
enabled = false

[rewriter]
edit_model_candidates = 0

[[upstreams]]
name = "mock"
base_url = "{base}"

[[tenants]]
id = "acme"
api_key_sha256 = ["{acme}"]
upstreams = ["mock"]
self_manage_profile = true
"#,
        base = mock.base_url(),
        acme = key_hash("sk-acme"),
    );
    let proxy = Proxy::start(&config, &[("VISA_ADMIN_KEY", ADMIN)]);
    let r = reqwest::Client::new()
        .put(proxy.url("/v1/tenants/acme/profile"))
        .bearer_auth(ADMIN)
        .json(
            &json!({"values": {"benevolence": {"target": 0.9}, "power": {"target": 0.0}},
                      "action": "rewrite"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for key in [Some(ADMIN), Some("sk-acme"), None] {
        let mut cmd = tokio::process::Command::new(&schemathesis);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("SCHEMATHESIS_HOOKS", "tests.fuzz.hooks")
            .args(["run", "openapi/openapi.json", "--url", &proxy.url("")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,openai_shaped_errors",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "30",
                "--seed",
                "7",
                "--request-timeout",
                "60",
                // No example database: every run starts from the seed alone.
                "--generation-database",
                "none",
            ])
            .kill_on_drop(true);
        if let Some(k) = key {
            cmd.args(["-H", &format!("Authorization: Bearer {k}")]);
        }
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .expect("the fuzz run did not stop within 300 s")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "fuzz run as {key:?} found failures:\n{stdout}\n{stderr}\n--- proxy:\n{}",
            proxy.stderr()
        );
        assert!(stdout.contains("passed"), "{stdout}");
    }
}

/// What the kernel says of a process: resident memory (KiB), threads, open files.
fn process_stats(pid: u32) -> (u64, u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (field("VmRSS:"), field("Threads:"), fds)
}

const LOAD_TENANTS: usize = 12;

/// One client of the load: a stream read to its end, one dropped after its first bytes, or a
/// request whose upstream fails in one of the ways the proxy handles. Returns the status.
async fn load_client(base: String, tenant: usize, kind: usize) -> u16 {
    let answer = "Send the spreadsheet to the finance team by Thursday. \
                  Gain power over everyone around you. Check that the totals match.";
    let chunks: Vec<String> = answer.split_inclusive(' ').map(str::to_owned).collect();
    let (stream, mock) = match kind % 8 {
        0 | 1 => (true, json!({"chunks": chunks, "delay_ms": 5})),
        2 => (true, json!({"chunks": chunks, "delay_ms": 40})),
        3 => (true, json!({"mode": "fail", "status": 503})),
        4 => (
            true,
            json!({"mode": "close_mid_stream", "chunks": chunks, "after": 6}),
        ),
        5 => (true, json!({"mode": "malformed_sse", "chunks": chunks})),
        6 => (true, json!({"mode": "stream_stall"})),
        _ => (false, json!({"mode": "garbage"})),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(format!("sk-load-{tenant}"))
        .json(&json!({"model": "m", "stream": stream,
                      "messages": [{"role": "user", "content": "How do I get ahead?"}],
                      "mock": mock}))
        .send()
        .await;
    let Ok(mut r) = r else { return 0 };
    let status = r.status().as_u16();
    if kind % 8 == 2 {
        // Disconnect mid-stream: read the first bytes, then drop the response.
        let _ = r.chunk().await;
        return status;
    }
    while let Ok(Some(_)) = r.chunk().await {}
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tenants_streaming_with_failures_and_disconnects_leave_nothing_behind() {
    let mock = MockUpstream::start().await;
    let mut tenants = String::new();
    for t in 0..LOAD_TENANTS {
        tenants.push_str(&format!(
            "\n[[tenants]]\nid = \"load{t}\"\napi_key_sha256 = [\"{}\"]\nupstreams = [\"mock\"]\n",
            key_hash(&format!("sk-load-{t}"))
        ));
    }
    let config = format!(
        r#"
[llm]
enabled = false

[rewriter]
edit_model_candidates = 0

[enforce]
first_window_chars = 20
window_chars = 40

[[upstreams]]
name = "mock"
base_url = "{base}"
total_timeout_ms = 4000
first_byte_timeout_ms = 2000
stream_idle_timeout_ms = 1000
max_retries = 0
{tenants}"#,
        base = mock.base_url(),
    );
    let proxy = Proxy::start(&config, &[("VISA_ADMIN_KEY", ADMIN)]);
    let http = reqwest::Client::new();
    for t in 0..LOAD_TENANTS {
        let (action, mode) = match t % 4 {
            0 => ("rewrite", "window"),
            1 => ("block", "window"),
            2 => ("rewrite", "buffer"),
            _ => ("audit", "window"),
        };
        let r = http
            .put(proxy.url(&format!("/v1/tenants/load{t}/profile")))
            .bearer_auth(ADMIN)
            .json(
                &json!({"values": {"power": {"target": 0.0, "tolerance": 0.3}},
                          "action": action, "stream_mode": mode}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let base = proxy.url("");
    let round = |clients: usize| {
        let base = base.clone();
        async move {
            let tasks: Vec<_> = (0..clients)
                .map(|k| {
                    tokio::spawn(load_client(
                        base.clone(),
                        k % LOAD_TENANTS,
                        k / LOAD_TENANTS + k,
                    ))
                })
                .collect();
            let mut statuses = Vec::new();
            for t in tasks {
                statuses.push(t.await.unwrap());
            }
            statuses
        }
    };
    let settle = || async {
        // Let cancelled work and closed connections wind down.
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    // Warm up (models, connection pools, allocator), then measure.
    round(LOAD_TENANTS * 4).await;
    settle().await;
    let pid = proxy.child.id();
    let before = process_stats(pid);
    let mut all = Vec::new();
    for _ in 0..4 {
        all.extend(round(LOAD_TENANTS * 4).await);
    }
    settle().await;
    let after = process_stats(pid);
    println!(
        "load: {} requests; RSS {} -> {} KiB, threads {} -> {}, open files {} -> {}",
        all.len(),
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2
    );
    // Every answer is one the proxy means: success, a limit, or the upstream's failure named.
    for s in &all {
        assert!([200, 429, 502, 503, 504].contains(s), "status {s}: {all:?}");
    }
    assert!(
        all.iter().filter(|s| **s == 200).count() > all.len() / 3,
        "{all:?}"
    );
    // Nothing left in flight, every upstream stream ended (finished or cancelled).
    let metrics = proxy.metrics(ADMIN).await;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("visa_http_requests_in_flight{"))
    {
        assert!(
            line.ends_with(" 0") || line.contains("route=\"/metrics\""),
            "still in flight: {line}"
        );
    }
    let s = &mock.state;
    let started = s.streams_started.load(std::sync::atomic::Ordering::SeqCst);
    let ended = s
        .streams_completed
        .load(std::sync::atomic::Ordering::SeqCst)
        + s.streams_cancelled
            .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(started, ended, "upstream streams left open");
    // No growth beyond noise: open files and threads back where they were, memory within a
    // bound far below what a per-request leak over this many requests would add.
    assert!(
        after.2 <= before.2 + 8,
        "open files {} -> {}",
        before.2,
        after.2
    );
    assert!(
        after.1 <= before.1 + 4,
        "threads {} -> {}",
        before.1,
        after.1
    );
    assert!(
        after.0 <= before.0 + 64 * 1024,
        "RSS {} -> {} KiB",
        before.0,
        after.0
    );
}
