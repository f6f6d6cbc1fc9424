//! The test suite's mock OpenAI-compatible upstream as a stand-alone server, for demos and
//! manual checks: `cargo run --release --example mock_upstream [ADDR]` (default 127.0.0.1:9090).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

#[path = "../tests/support/mock_upstream.rs"]
mod mock_upstream;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".to_owned());
    let mock = mock_upstream::MockUpstream::start_on(&addr).await;
    mock.state
        .record
        .store(false, std::sync::atomic::Ordering::Relaxed);
    println!("mock upstream listening on {}", mock.base_url());
    let _ = tokio::signal::ctrl_c().await;
}
