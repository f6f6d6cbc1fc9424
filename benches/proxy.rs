//! Proxy overhead benchmark: the mock upstream directly and through the real `visa-proxy`
//! binary (and optionally a peer gateway), in the same run, on loopback, at fixed concurrency
//! levels, for JSON and streaming requests, with and without a mock time to first token.
//! Prints throughput, p50/p99 latency, the latency the proxy adds, and the proxy's CPU use and
//! memory per point.
//!
//! `cargo bench --bench proxy` (env: BENCH_SECS per run, default 3; BENCH_CONCURRENCY, default
//! "1,16,64,256"; BENCH_TTFT, the mock's time to first token in ms, default "0,10"; PEER_URL
//! (base URL up to /v1 of another OpenAI-compatible gateway started by hand with the printed
//! mock URL as its upstream), PEER_KEY, PEER_MODEL (default "bench"), PEER_PID (for its CPU
//! and memory), PEER_WAIT (seconds to wait after printing the mock URL, default 0)).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

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
async fn load(target: &Target, stream: bool, ttft_ms: u64, concurrency: usize, secs: f64) -> Stats {
    use http_body_util::{BodyExt, Full};
    let mut body = json!({"model": target.model, "messages": [{"role": "user", "content": "hello benchmark"}]});
    if stream {
        body["stream"] = json!(true);
    }
    if ttft_ms > 0 {
        body["mock"] = json!({"ttft_ms": ttft_ms});
    }
    let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap());
    let addr = target.addr;
    let warm_until = Instant::now() + Duration::from_millis(300);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let body = body.clone();
        let stop = stop.clone();
        let path = target.path.clone();
        let auth = target.auth.clone();
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
                if let Some(auth) = &auth {
                    req = req.header("authorization", auth.as_str());
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
    // Its own store: a profile left in the working directory's would change what is measured.
    let db = dir.join("profiles.sqlite").display().to_string();
    let config = format!(
        r#"
[server]
max_concurrent_requests = 100000
[log]
level = "info"
[llm]
enabled = false
[profiles]
database = "{db}"
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

/// Where one series of requests goes.
struct Target {
    name: &'static str,
    addr: std::net::SocketAddr,
    path: String,
    auth: Option<String>,
    model: String,
    /// Its process, for CPU and memory.
    pid: Option<u32>,
}

/// CPU seconds (user + system) a process has used, and its resident and peak memory in MB.
fn proc_usage(pid: u32) -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|k| k / 1024.0)
    };
    Some((cpu, kb("VmRSS:")?, kb("VmHWM:")?))
}

/// Steal and total CPU ticks of the machine so far (from /proc/stat).
fn steal_ticks() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    Some((*f.get(7)?, f.iter().sum()))
}

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A peer gateway from PEER_URL (http only), if set.
fn peer() -> Option<Target> {
    let url = reqwest::Url::parse(&std::env::var("PEER_URL").ok()?).expect("PEER_URL");
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(
        url.host_str().expect("PEER_URL host"),
        url.port_or_known_default().unwrap_or(80),
    ))
    .expect("PEER_URL address")
    .next()
    .expect("PEER_URL address");
    Some(Target {
        name: "peer",
        addr,
        path: format!("{}/chat/completions", url.path().trim_end_matches('/')),
        auth: std::env::var("PEER_KEY")
            .ok()
            .map(|k| format!("Bearer {k}")),
        model: std::env::var("PEER_MODEL").unwrap_or_else(|_| "bench".into()),
        pid: std::env::var("PEER_PID").ok().and_then(|p| p.parse().ok()),
    })
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let levels = env_list("BENCH_CONCURRENCY", "1,16,64,256");
    let tiers = env_list("BENCH_TTFT", "0,10");

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
    println!("mock upstream: {}", mock.base_url());
    let mut targets = vec![
        Target {
            name: "direct",
            addr: mock.addr,
            path: "/v1/chat/completions".into(),
            auth: None,
            model: "bench".into(),
            pid: None,
        },
        Target {
            name: "proxy",
            addr: proxy_addr,
            path: "/v1/chat/completions".into(),
            auth: Some(format!("Bearer {KEY}")),
            model: "bench".into(),
            pid: Some(proxy.id()),
        },
    ];
    if let Some(p) = peer() {
        let wait: f64 = std::env::var("PEER_WAIT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        std::thread::sleep(Duration::from_secs_f64(wait));
        targets.push(p);
    }

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
    if let Some((_, rss, _)) = proc_usage(proxy.id()) {
        println!("visa-proxy idle: RSS {rss:.1} MB");
    }
    let steal_start = steal_ticks();
    println!(
        "| mode | ttft ms | conc | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | x direct | cpu % | rss MB | peak MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for stream in [false, true] {
        for &ttft in &tiers {
            for &c in &levels {
                let mut direct: Option<(f64, f64, f64)> = None;
                for target in &targets {
                    let before = target.pid.and_then(proc_usage);
                    let started = Instant::now();
                    let stats = load_rt.block_on(load(target, stream, ttft, c as usize, secs));
                    let wall = started.elapsed().as_secs_f64();
                    let after = target.pid.and_then(proc_usage);
                    let rps = stats.requests as f64 / stats.secs;
                    let (added, ratio) = match direct {
                        None => {
                            direct = Some((rps, stats.p50_us, stats.p99_us));
                            ("- | -".to_owned(), "-".to_owned())
                        }
                        Some((d_rps, d50, d99)) => (
                            format!(
                                "{:.3} | {:.3}",
                                (stats.p50_us - d50) / 1e3,
                                (stats.p99_us - d99) / 1e3
                            ),
                            format!("{:.2}", rps / d_rps),
                        ),
                    };
                    let usage = match (before, after) {
                        (Some((b, _, _)), Some((a, rss, hwm))) => {
                            format!("{:.0} | {rss:.1} | {hwm:.1}", 100.0 * (a - b) / wall)
                        }
                        _ => "- | - | -".to_owned(),
                    };
                    println!(
                        "| {} | {ttft} | {c} | {} | {rps:.0} | {:.3} | {:.3} | {added} | {ratio} | {usage} |{}",
                        if stream { "stream" } else { "json" },
                        target.name,
                        stats.p50_us / 1e3,
                        stats.p99_us / 1e3,
                        if stats.errors > 0 {
                            format!(" errors: {}", stats.errors)
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
    }
    if let (Some((s0, t0)), Some((s1, t1))) = (steal_start, steal_ticks())
        && t1 > t0
    {
        // Time the hypervisor gave to other machines: runs with much of it compare badly.
        println!(
            "CPU stolen by the hypervisor during the run: {:.0}%",
            100.0 * (s1 - s0) / (t1 - t0)
        );
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
}
