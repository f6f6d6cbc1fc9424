//! Several replicas on one PostgreSQL profile store: two real proxy processes, one real
//! PostgreSQL server (`.ci/run` starts it; `VISA_TEST_POSTGRES` names it), driven over HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::key_hash;
use support::mock_upstream::MockUpstream;
use support::postgres::PrivatePostgres;
use support::proxy::Proxy;
use support::redis::RedisServer;

const ADMIN_KEY: &str = "admin-secret";

const SHARED_STORE: &str = "backend = \"postgres\"\nurl_env = \"VISA_TEST_PROFILES_URL\"";

fn config(mock: &MockUpstream) -> String {
    config_with(mock, SHARED_STORE, "")
}

/// `store` is the body of `[profiles]`; `extra` is added at the end (a `[limits]` table).
fn config_with(mock: &MockUpstream, store: &str, extra: &str) -> String {
    format!(
        r#"
[models]
enabled = false

[llm]
enabled = false

[profiles]
{store}

[[upstreams]]
name = "mock"
base_url = "{base}"

[[tenants]]
id = "acme"
api_key_sha256 = ["{acme}"]
upstreams = ["mock"]

[[tenants]]
id = "rpm"
api_key_sha256 = ["{rpm}"]
upstreams = ["mock"]
limits = {{ requests_per_minute = 4 }}

[[tenants]]
id = "solo"
api_key_sha256 = ["{solo}"]
upstreams = ["mock"]
limits = {{ max_concurrent = 1 }}
{extra}
"#,
        base = mock.base_url(),
        acme = key_hash("sk-acme"),
        rpm = key_hash("sk-rpm"),
        solo = key_hash("sk-solo"),
    )
}

/// Two replicas on one fresh database, or `None` when the environment has no PostgreSQL.
async fn replicas() -> Option<(MockUpstream, Proxy, Proxy, String)> {
    let url = tokio::task::spawn_blocking(visa_proxy::store::testing::fresh_postgres)
        .await
        .unwrap()?;
    let mock = MockUpstream::start().await;
    let env = [
        ("VISA_TEST_PROFILES_URL", url.as_str()),
        ("VISA_ADMIN_KEY", ADMIN_KEY),
    ];
    let a = Proxy::start(&config(&mock), &env);
    let b = Proxy::start(&config(&mock), &env);
    Some((mock, a, b, url))
}

async fn put(proxy: &Proxy, target: f64) -> reqwest::Response {
    reqwest::Client::new()
        .put(proxy.url("/v1/tenants/acme/profile"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"values": {"benevolence": {"target": target}}, "action": "audit"}))
        .send()
        .await
        .unwrap()
}

/// The profile a replica's request path would enforce now (the tenant's own view of it).
async fn seen_version(proxy: &Proxy) -> Option<u64> {
    let r = reqwest::Client::new()
        .get(proxy.url("/v1/profile"))
        .bearer_auth("sk-acme")
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["version"].as_u64()
}

async fn get_json(proxy: &Proxy, path: &str, key: &str) -> Value {
    reqwest::Client::new()
        .get(proxy.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn until(limit: Duration, what: &str, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn a_profile_saved_on_one_replica_is_enforced_by_the_other_within_a_second() {
    let Some((_mock, a, b, _url)) = replicas().await else {
        return;
    };
    assert_eq!(seen_version(&b).await, None);
    // Without a profile, b passes answers through.
    assert_eq!(chat(&b, "sk-acme", json!({})).await.status(), 200);
    let r = reqwest::Client::new()
        .put(a.url("/v1/tenants/acme/profile"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"values": {"power": {"target": 0.1}}, "action": "block"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 1);
    let took = until(Duration::from_secs(1), "b enforces version 1", async || {
        seen_version(&b).await == Some(1)
    })
    .await;
    // b enforces it: a blocking profile on a proxy without the value models fails closed
    // rather than passing unchecked text.
    let (status, body) = {
        let r = chat(&b, "sk-acme", json!({})).await;
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("value profile"),
        "{body}"
    );
    eprintln!("replica b enforced the profile saved on a after {took:?}");
    // And back the other way, a deletion included.
    let r = reqwest::Client::new()
        .delete(b.url("/v1/tenants/acme/profile"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    until(Duration::from_secs(1), "a sees the deletion", async || {
        seen_version(&a).await.is_none()
    })
    .await;
    assert_eq!(chat(&a, "sk-acme", json!({})).await.status(), 200);
    // Each replica says its change feed is connected.
    for p in [&a, &b] {
        let state = ready(p).await;
        assert_eq!(state["profile_feed"], "connected", "{state}");
    }
}

#[tokio::test]
async fn concurrent_saves_on_both_replicas_keep_every_version() {
    let Some((_mock, a, b, _url)) = replicas().await else {
        return;
    };
    let per_replica = 12;
    let saves = (0..per_replica).flat_map(|i| {
        let t = 0.05 + 0.07 * i as f64;
        [put(&a, t), put(&b, t)]
    });
    let mut versions: Vec<u64> = Vec::new();
    for r in futures_util::future::join_all(saves).await {
        assert_eq!(r.status(), 200);
        versions.push(
            r.json::<Value>().await.unwrap()["version"]
                .as_u64()
                .unwrap(),
        );
    }
    versions.sort_unstable();
    let total = 2 * per_replica as u64;
    assert_eq!(versions, (1..=total).collect::<Vec<_>>());
    let history: Value = get_json(&b, "/v1/tenants/acme/profile/history", ADMIN_KEY).await;
    let stored: Vec<u64> = history["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{history}"))
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, (1..=total).rev().collect::<Vec<_>>());
    // Both replicas end on the newest version.
    for p in [&a, &b] {
        until(Duration::from_secs(1), "the newest version", async || {
            seen_version(p).await == Some(total)
        })
        .await;
    }
}

#[tokio::test]
async fn migrate_applies_the_schema_once() {
    let Some(url) = tokio::task::spawn_blocking(visa_proxy::store::testing::fresh_postgres)
        .await
        .unwrap()
    else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(&mock)).unwrap();
    for _ in 0..2 {
        let out = support::run_ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
                .arg("migrate")
                .arg("--config")
                .arg(&path)
                .env("VISA_TEST_PROFILES_URL", &url),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("up to date; 0 tenants"), "{text}");
    }
    // A replica that cannot reach its database does not start, and says why.
    let err = Proxy::try_start(
        &config(&mock),
        &[(
            "VISA_TEST_PROFILES_URL",
            "host=127.0.0.1 port=1 user=nobody connect_timeout=2",
        )],
    )
    .err()
    .expect("no database, no proxy");
    assert!(err.contains("profiles.url"), "{err}");
}

/// Limits shared through this Redis, under a key prefix of their own.
fn redis_limits(redis: &RedisServer) -> String {
    format!(
        "[limits]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"t{}\"\n",
        redis.url(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Replicas with a SQLite store each and limits shared through `redis`.
fn limited_replicas(mock: &MockUpstream, redis: &RedisServer, n: usize) -> Vec<Proxy> {
    let text = config_with(mock, "backend = \"sqlite\"", &redis_limits(redis));
    (0..n)
        .map(|_| Proxy::start(&text, &[("VISA_ADMIN_KEY", ADMIN_KEY)]))
        .collect()
}

async fn chat(proxy: &Proxy, key: &str, mock: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "mock": mock}))
        .send()
        .await
        .unwrap()
}

async fn ready(proxy: &Proxy) -> Value {
    get_json(proxy, "/readyz", ADMIN_KEY).await
}

async fn error_code(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["error"]["code"].clone())
}

#[tokio::test]
async fn a_tenants_requests_per_minute_hold_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = limited_replicas(&mock, &redis, 2);
    // Four a minute in all: two on each replica pass, the fifth (on either) does not.
    for i in 0..4 {
        let r = chat(&replicas[i % 2], "sk-rpm", json!({})).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    for p in &replicas {
        let r = chat(p, "sk-rpm", json!({})).await;
        let retry_after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=15).contains(&retry_after), "retry-after {retry_after}");
        assert_eq!(error_code(r).await, (429, json!("rate_limit_exceeded")));
        assert_eq!(ready(p).await["limits"], "redis");
    }
    // A tenant without limits is not counted at all.
    assert_eq!(chat(&replicas[0], "sk-acme", json!({})).await.status(), 200);
}

#[tokio::test]
async fn a_tenants_concurrency_limit_holds_across_replicas_and_frees_when_the_answer_ends() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = limited_replicas(&mock, &redis, 2);
    let base = replicas[0].base.clone();
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth("sk-solo")
            .json(
                &json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}],
                "mock": {"mode": "hang", "delay_ms": 700}}),
            )
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = chat(&replicas[1], "sk-solo", json!({})).await;
    assert_eq!(
        error_code(r).await,
        (429, json!("concurrency_limit_exceeded"))
    );
    assert_eq!(slow.await.unwrap(), 200);
    // The lease is given back when the first answer is done.
    until(
        Duration::from_secs(2),
        "the slot is free again",
        async || chat(&replicas[1], "sk-solo", json!({})).await.status() == 200,
    )
    .await;
}

#[tokio::test]
async fn when_redis_dies_each_replica_enforces_its_own_limits_and_no_request_fails() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = limited_replicas(&mock, &redis, 1);
    let p = &replicas[0];
    assert_eq!(chat(p, "sk-rpm", json!({})).await.status(), 200);
    assert_eq!(ready(p).await["limits"], "redis");
    redis.kill();
    // Every request is answered: passed, or refused by this replica's own bucket of four.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(chat(p, "sk-rpm", json!({})).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    assert_eq!(chat(p, "sk-acme", json!({})).await.status(), 200);
    let state = ready(p).await;
    assert_eq!(state["status"], "ready");
    assert_eq!(state["limits"], "redis unreachable: per-replica limits");
    let metrics = p.metrics(ADMIN_KEY).await;
    let fallbacks: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("visa_limits_fallback_total "))
        .unwrap_or_else(|| panic!("no fallback counter in {metrics}"))
        .parse()
        .unwrap();
    assert!(fallbacks >= 6.0, "{fallbacks}");
}

/// The compose file's replica config is one the proxy accepts (no Docker engine runs here).
#[test]
fn the_compose_replica_config_is_valid() {
    let out = support::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_visa-proxy"))
            .args(["check-config", "--config"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/replica.toml"))
            .env("VISA_PROFILES_URL", "host=postgres user=visa dbname=visa")
            .env("VISA_LIMITS_URL", "redis://redis:6379/0"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 upstreams, 1 tenants)"));
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose.yaml"))
            .unwrap();
    for needle in [
        "VISA_PROFILES_URL",
        "VISA_LIMITS_URL",
        "/app/replica.toml",
        "postgres:15",
        "redis:7",
    ] {
        assert!(compose.contains(needle), "compose.yaml lost {needle}");
    }
}

/// PostgreSQL restarted while both replicas keep writing: every write that was acknowledged is
/// in the history, versions have no gap or repeat, writes work again once it is back, and both
/// replicas' views end on the newest version (their change feeds reconnect and reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgresql_under_load_loses_no_acknowledged_write() {
    let Some(pg) = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap()
    else {
        return;
    };
    let mock = MockUpstream::start().await;
    let url = pg.url();
    let env = [
        ("VISA_TEST_PROFILES_URL", url.as_str()),
        ("VISA_ADMIN_KEY", ADMIN_KEY),
    ];
    let replicas = std::sync::Arc::new([
        Proxy::start(&config(&mock), &env),
        Proxy::start(&config(&mock), &env),
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (replicas, stop) = (replicas.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), 0);
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let r = put(&replicas[w], 0.01 * f64::from(i % 90)).await;
                    match r.status().as_u16() {
                        200 => acked.push(
                            r.json::<Value>().await.unwrap()["version"]
                                .as_u64()
                                .unwrap(),
                        ),
                        500 => failed += 1,
                        other => panic!("unexpected status {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                (acked, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        let (a, _failed) = w.await.unwrap();
        acked.extend(a);
    }
    // Writes work again on both replicas.
    for p in replicas.iter() {
        until(
            Duration::from_secs(10),
            "a write after the restart",
            async || put(p, 0.5).await.status() == 200,
        )
        .await;
    }
    // Read from the database itself: every version, however many.
    let stored: Vec<u64> = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query(
            "SELECT version FROM profile_versions WHERE tenant_id = 'acme' ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
    })
    .await
    .unwrap();
    let newest = *stored.last().unwrap();
    assert_eq!(
        stored,
        (1..=newest).collect::<Vec<_>>(),
        "a gap or a repeat"
    );
    let mut unique = acked.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        acked.len(),
        "a version acknowledged twice: {acked:?}"
    );
    for v in &acked {
        assert!(stored.contains(v), "acknowledged version {v} is not stored");
    }
    assert!(acked.len() >= 10, "too few writes went through: {acked:?}");
    for p in replicas.iter() {
        until(
            Duration::from_secs(10),
            "the newest version in every view",
            async || seen_version(p).await == Some(newest),
        )
        .await;
        // The restart did reach them: each replica's change feed lost its connection.
        let log = p.stderr();
        assert!(
            log.contains("profile listener lost its connection")
                || log.contains("profile change feed disconnected"),
            "{log}"
        );
    }
    drop(pg);
}

/// PATCHes of different fields on both replicas at once: each is computed on the version it
/// replaces and written only on top of it (computed again when another got there first), so
/// neither replica's change is lost, however stale its view was.
#[tokio::test]
async fn concurrent_patches_on_both_replicas_lose_no_change() {
    let Some((_mock, a, b, _url)) = replicas().await else {
        return;
    };
    assert_eq!(put(&a, 0.5).await.status(), 200);
    until(Duration::from_secs(1), "b sees version 1", async || {
        seen_version(&b).await == Some(1)
    })
    .await;
    let patch = |p: &Proxy, value: &str, target: f64| {
        let r = reqwest::Client::new()
            .patch(p.url("/v1/tenants/acme/profile"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"values": {value: {"target": target}}}));
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let rounds: u32 = 10;
    let on_a = async {
        for i in 0..rounds {
            assert_eq!(patch(&a, "power", 0.01 * f64::from(i + 1)).await, 200);
        }
    };
    let on_b = async {
        for i in 0..rounds {
            assert_eq!(
                patch(&b, "universalism", 0.5 + 0.01 * f64::from(i + 1)).await,
                200
            );
        }
    };
    tokio::join!(on_a, on_b);
    let total = 1 + 2 * u64::from(rounds);
    for p in [&a, &b] {
        until(Duration::from_secs(1), "the newest version", async || {
            seen_version(p).await == Some(total)
        })
        .await;
    }
    let profile: Value = get_json(&b, "/v1/profile", "sk-acme").await;
    let target = |v: &str| profile["values"][v]["target"].as_f64().unwrap();
    assert!((target("power") - 0.1).abs() < 1e-4, "{profile}");
    assert!((target("universalism") - 0.6).abs() < 1e-4, "{profile}");
    assert!((target("benevolence") - 0.5).abs() < 1e-4, "{profile}");
}
