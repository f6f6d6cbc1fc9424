//! The web console end to end: headless Chromium (driven by playwright-core from
//! tests/browser/console.test.mjs) against the real proxy with the real local models and a mock
//! upstream. Sign-in, the tenants list, the profile editor (validation error at the field,
//! keyboard and pointer edits of the chart, save), the translator, history and restore, the
//! playground's rewrite and its streamed view, tenant isolation, the overview, and the decision log. Screenshots
//! land in `$VISA_SCREENSHOTS` (default: `console-screenshots` in cargo's target directory).
//! Needs `bash scripts/setup-browser.sh` (Chromium and playwright-core; `.ci/run` runs it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod support;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::key_hash;
use support::mock_upstream::MockUpstream;
use support::proxy::Proxy;

const ADMIN: &str = "admin-secret";
/// An answer all about power and status, far from a caring profile.
const OFF_PROFILE: &str = "Crush your rivals and take control of the whole market. \
Show everyone that you are the boss, because status and wealth are what count.";

fn config(mock: &MockUpstream) -> String {
    format!(
        r#"
[llm]
max_queue = 6
max_num_seqs = 4
max_tokens = 96

[rewriter]
candidates = 2
temperature = 0.7
max_length_ratio = 3.0
min_length_ratio = 0.1
# A shield that lets any well-formed candidate through, so the test sees a rewrite whatever
# the small model writes (tests/enforce.rs covers the real shield).
min_improvement = -1.0
min_integrity = 0.0

[enforce]
first_window_chars = 20
window_chars = 60

[[upstreams]]
name = "mock"
base_url = "{base}"

[[tenants]]
id = "acme"
api_key_sha256 = ["{acme}"]
upstreams = ["mock"]
self_manage_profile = true

[[tenants]]
id = "globex"
api_key_sha256 = ["{globex}"]
upstreams = ["mock"]
"#,
        base = mock.base_url(),
        acme = key_hash("sk-acme"),
        globex = key_hash("sk-globex"),
    )
}

fn screenshots() -> PathBuf {
    std::env::var_os("VISA_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
            target.join("console-screenshots")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_works_in_a_real_browser() {
    let browser_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    assert!(
        std::path::Path::new(browser_dir)
            .join("node_modules/playwright-core")
            .exists(),
        "playwright-core is missing: run `bash scripts/setup-browser.sh`"
    );
    let mock = MockUpstream::start().await;
    mock.state.echo_streams.store(true, Ordering::SeqCst);
    let proxy = Proxy::start(&config(&mock), &[("VISA_ADMIN_KEY", ADMIN)]);
    // Another tenant's profile, which acme's key must never reach.
    let r = reqwest::Client::new()
        .put(proxy.url("/v1/tenants/globex/profile"))
        .bearer_auth(ADMIN)
        .json(&json!({"values": {"tradition": {"target": 0.8}}, "action": "block"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);

    let shots = screenshots();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("--test")
        .arg("--test-reporter=spec")
        .arg("console.test.mjs")
        .current_dir(browser_dir)
        .env("VISA_BASE_URL", &proxy.base)
        .env("VISA_ADMIN_KEY", ADMIN)
        .env("VISA_TENANT", "acme")
        .env("VISA_TENANT_KEY", "sk-acme")
        .env("VISA_OTHER", "globex")
        .env("VISA_TEXT", OFF_PROFILE)
        .env("VISA_SCREENSHOTS", &shots)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .expect("the browser tests took over 15 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser tests failed:\n{stdout}\n{stderr}\nproxy log:\n{}",
        proxy.stderr()
    );
    assert!(stdout.contains("fail 0"), "{stdout}\n{stderr}");
    println!("{stdout}\nscreenshots in {}", shots.display());
    for name in [
        "tenants",
        "profile-editor",
        "playground",
        "overview",
        "decisions",
    ] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}.png");
    }
}
