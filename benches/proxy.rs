//! Proxy overhead benchmark: the mock upstream directly and through the real `visa-proxy`
//! binary, in the same run, on loopback, at fixed concurrency levels, for JSON and streaming
//! requests. Prints throughput, p50/p99 latency and the latency the proxy adds.
//!
//! `cargo bench --bench proxy` (env: BENCH_SECS per run, default 3; BENCH_CONCURRENCY, default
//! "1,16,64").

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mock_upstream.rs"]
mod mock_upstream;

#[path = "support/child.rs"]
mod child;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

const KEY: &str = "sk-bench";

struct Stats {
    requests: usize,
    errors: usize,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx])
}

/// One HTTP/1.1 keep-alive connection per concurrent client, like wrk: the load generator
/// should cost as little CPU as possible, since it shares the machine with both servers.
async fn load(
    addr: std::net::SocketAddr,
    path: String,
    auth: bool,
    stream: bool,
    concurrency: usize,
    secs: f64,
) -> Stats {
    use http_body_util::{BodyExt, Full};
    let mut body =
        json!({"model": "bench", "messages": [{"role": "user", "content": "hello benchmark"}]});
    if stream {
        body["stream"] = json!(true);
    }
    let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap());
    let warm_until = Instant::now() + Duration::from_millis(300);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let body = body.clone();
        let stop = stop.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut req = hyper::Request::post(path.as_str())
                    .header("host", "bench")
                    .header("content-type", "application/json");
                if auth {
                    req = req.header("authorization", format!("Bearer {KEY}"));
                }
                let req = req.body(Full::new(body.clone())).unwrap();
                let ok = match sender.send_request(req).await {
                    Ok(r) if r.status().is_success() => r.into_body().collect().await.is_ok(),
                    Ok(r) => {
                        let _ = r.into_body().collect().await;
                        false
                    }
                    Err(_) => break,
                };
                if started < warm_until {
                    continue;
                }
                if ok {
                    lat.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let measure_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let secs = measure_start.elapsed().as_secs_f64();
    all.sort_unstable();
    Stats {
        requests: all.len(),
        errors,
        secs,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
    }
}

fn start_proxy(mock_base: &str, dir: &std::path::Path) -> (std::process::Child, String) {
    let hash = hex::encode(visa_proxy::config::hash_key(KEY));
    let config = format!(
        r#"
[server]
max_concurrent_requests = 100000
[log]
level = "info"
[llm]
enabled = false
[[upstreams]]
name = "mock"
base_url = "{mock_base}"
[[tenants]]
id = "bench"
api_key_sha256 = ["{hash}"]
upstreams = ["mock"]
"#
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = child::ends_with_bench(&mut Command::new(env!("CARGO_BIN_EXE_visa-proxy")))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("visa-proxy listening on ")
        .unwrap()
        .to_owned();
    (child, base)
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    // The mock upstream runs on its own single-thread runtime, like a separate server.
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = mock_rt.block_on(async {
        let m = mock_upstream::MockUpstream::start().await;
        m.state.record.store(false, Ordering::Relaxed);
        m
    });
    let dir = tempfile::tempdir().unwrap();
    let (mut proxy, proxy_base) = start_proxy(&mock.base_url(), dir.path());
    let proxy_addr: std::net::SocketAddr =
        proxy_base.trim_start_matches("http://").parse().unwrap();

    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    println!(
        "visa-proxy overhead benchmark: {} s per run, {} CPUs, loopback, mock upstream in-process, proxy = release binary",
        secs,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "| mode | conc | direct req/s | direct p50 ms | direct p99 ms | proxy req/s | proxy p50 ms | proxy p99 ms | added p50 ms | added p99 ms | proxy/direct throughput |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for stream in [false, true] {
        for &c in &levels {
            let direct = load_rt.block_on(load(
                mock.addr,
                "/v1/chat/completions".into(),
                false,
                stream,
                c,
                secs,
            ));
            let proxied = load_rt.block_on(load(
                proxy_addr,
                "/v1/chat/completions".into(),
                true,
                stream,
                c,
                secs,
            ));
            let rps = |s: &Stats| s.requests as f64 / s.secs;
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |{}",
                if stream { "stream" } else { "json" },
                c,
                rps(&direct),
                direct.p50_us / 1e3,
                direct.p99_us / 1e3,
                rps(&proxied),
                proxied.p50_us / 1e3,
                proxied.p99_us / 1e3,
                (proxied.p50_us - direct.p50_us) / 1e3,
                (proxied.p99_us - direct.p99_us) / 1e3,
                rps(&proxied) / rps(&direct),
                if direct.errors + proxied.errors > 0 {
                    format!(" errors: direct {} proxy {}", direct.errors, proxied.errors)
                } else {
                    String::new()
                }
            );
        }
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
}
