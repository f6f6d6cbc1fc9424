//! Integration tests of value profiles, the detector and the translator through the running
//! proxy with the real encoder and the committed detector head.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::key_hash;
use support::mock_upstream::MockUpstream;
use support::proxy::Proxy;

const ADMIN: &str = "admin-secret";

fn config(mock: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
[llm]
enabled = false
{extra}

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

async fn setup() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(&config(&mock, ""), &[("VISA_ADMIN_KEY", ADMIN)]);
    (mock, proxy)
}

fn c() -> reqwest::Client {
    reqwest::Client::new()
}

async fn call(
    proxy: &Proxy,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c().request(method, proxy.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

use reqwest::Method;

fn approx(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-5)
}

#[tokio::test]
async fn profile_crud_with_versions_and_history() {
    let (_m, p) = setup().await;
    let path = "/v1/tenants/acme/profile";
    let (s, e) = call(&p, Method::GET, path, ADMIN, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("profile_not_found"))
    );

    let (s, v1) = call(&p, Method::PUT, path, ADMIN, Some(json!({"values": {"benevolence": {"target": 0.8}, "power": {"target": 0.1, "weight": 2}}, "action": "rewrite"}))).await;
    assert_eq!(s, 200, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["values"]["benevolence"]["tolerance"], 0.15);
    assert_eq!(v1["values"]["power"]["weight"], 2.0);
    assert_eq!(v1["fallback"], "original");
    let (s, got) = call(&p, Method::GET, path, ADMIN, None).await;
    assert_eq!((s, &got), (200, &v1));

    let (s, v2) = call(
        &p,
        Method::PATCH,
        path,
        ADMIN,
        Some(json!({"values": {"power": {"tolerance": 0.05}}, "fallback": "block"})),
    )
    .await;
    assert_eq!(s, 200, "{v2}");
    assert_eq!(v2["version"], 2);
    assert!(approx(&v2["values"]["power"]["target"], 0.1));
    assert!(approx(&v2["values"]["power"]["tolerance"], 0.05));
    assert_eq!(v2["fallback"], "block");
    let (_, v3) = call(
        &p,
        Method::PATCH,
        path,
        ADMIN,
        Some(json!({"values": {"power": null}})),
    )
    .await;
    assert_eq!(v3["version"], 3);
    assert!(v3["values"].get("power").is_none());

    let (s, d) = call(&p, Method::DELETE, path, ADMIN, None).await;
    assert_eq!((s, d["version"].as_u64()), (200, Some(4)));
    let (s, _) = call(&p, Method::GET, path, ADMIN, None).await;
    assert_eq!(s, 404);
    let (s, _) = call(&p, Method::DELETE, path, ADMIN, None).await;
    assert_eq!(s, 404, "nothing left to delete");

    let (s, h) = call(
        &p,
        Method::GET,
        "/v1/tenants/acme/profile/history",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let versions: Vec<u64> = h["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4, 3, 2, 1]);
    assert!(h["data"][0]["profile"].is_null());
    assert_eq!(h["data"][3]["profile"], v1);
    let (_, h) = call(
        &p,
        Method::GET,
        "/v1/tenants/acme/profile/history?limit=2",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(h["data"].as_array().unwrap().len(), 2);

    let (s, e) = call(&p, Method::GET, "/v1/tenants/nobody/profile", ADMIN, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("tenant_not_found"))
    );
}

#[tokio::test]
async fn invalid_profiles_name_the_field_and_write_nothing() {
    let (_m, p) = setup().await;
    let path = "/v1/tenants/acme/profile";
    let (s, _) = call(
        &p,
        Method::PUT,
        path,
        ADMIN,
        Some(json!({"values": {"security": {"target": 0.6}}})),
    )
    .await;
    assert_eq!(s, 200);
    let cases = [
        (
            json!({"values": {"kindness": {"target": 0.5}}}),
            "values.kindness",
        ),
        (
            json!({"values": {"power": {"target": 1.5}}}),
            "values.power.target",
        ),
        (
            json!({"values": {"power": {"target": 0.5, "weight": -1}}}),
            "values.power.weight",
        ),
        (
            json!({"values": {"power": {"target": 0.5, "tolerance": 2}}}),
            "values.power.tolerance",
        ),
        (json!({"action": "delete-everything"}), "action"),
        (json!({"fallback": "rewrite"}), "fallback"),
        (
            json!({"values": {"power": {"weight": 1}}}),
            "values.power.target",
        ),
        (
            json!({"values": {"power": {"target": null}}}),
            "values.power.target",
        ),
        (
            json!({"values": {"power": {"target": 0.5, "colour": "red"}}}),
            "values.power.colour",
        ),
        (json!({"max_added_ms": 600_001}), "max_added_ms"),
        (json!({"steer": "yes"}), "steer"),
        (json!({"version": "three"}), "version"),
    ];
    for (body, param) in cases {
        let (s, e) = call(&p, Method::PUT, path, ADMIN, Some(body.clone())).await;
        assert_eq!(s, 422, "{body}: {e}");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains(param.rsplit('.').next().unwrap()),
            "{e}"
        );
    }
    let (s, e) = call(
        &p,
        Method::PATCH,
        path,
        ADMIN,
        Some(json!({"values": {"hedonism": {"weight": 3}}})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (422, Some("values.hedonism.target"))
    );
    let (s, e) = call(
        &p,
        Method::PATCH,
        path,
        ADMIN,
        Some(json!({"instruction": "   "})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (422, Some("instruction"))
    );
    let (s, _) = call(&p, Method::PATCH, path, ADMIN, Some(json!({}))).await;
    assert_eq!(s, 400);
    // A patch applies to the newest version unless If-Match says otherwise: a `version` in
    // its body would look like a precondition and is refused, naming If-Match.
    let (s, e) = call(
        &p,
        Method::PATCH,
        path,
        ADMIN,
        Some(json!({"version": 1, "action": "block"})),
    )
    .await;
    assert_eq!((s, e["error"]["param"].as_str()), (422, Some("version")));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("If-Match"),
        "{e}"
    );
    let (s, e) = call(
        &p,
        Method::PATCH,
        path,
        ADMIN,
        Some(json!({"instruction": 5})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (422, Some("instruction"))
    );
    let resp = c()
        .put(p.url(path))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let (_, h) = call(
        &p,
        Method::GET,
        "/v1/tenants/acme/profile/history",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(
        h["data"].as_array().unwrap().len(),
        1,
        "failed validation must not write: {h}"
    );
    let (_, cur) = call(&p, Method::GET, path, ADMIN, None).await;
    assert_eq!(cur["version"], 1);
}

#[tokio::test]
async fn tenants_see_only_their_own_profile() {
    let (_m, p) = setup().await;
    call(
        &p,
        Method::PUT,
        "/v1/tenants/globex/profile",
        ADMIN,
        Some(json!({"values": {"power": {"target": 0.9}}})),
    )
    .await;

    // acme has no profile yet and cannot reach globex's.
    let (s, _) = call(&p, Method::GET, "/v1/profile", "sk-acme", None).await;
    assert_eq!(s, 404);
    let (s, e) = call(
        &p,
        Method::GET,
        "/v1/tenants/globex/profile",
        "sk-acme",
        None,
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = call(
        &p,
        Method::PUT,
        "/v1/tenants/globex/profile",
        "sk-acme",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &p,
        Method::GET,
        "/v1/tenants/globex/profile/history",
        "sk-acme",
        None,
    )
    .await;
    assert_eq!(s, 403);

    // acme may manage its own; globex may not.
    let (s, mine) = call(
        &p,
        Method::PUT,
        "/v1/profile",
        "sk-acme",
        Some(json!({"values": {"benevolence": {"target": 0.7}}})),
    )
    .await;
    assert_eq!(s, 200, "{mine}");
    let (s, got) = call(&p, Method::GET, "/v1/profile", "sk-acme", None).await;
    assert_eq!(s, 200);
    assert!(
        approx(&got["values"]["benevolence"]["target"], 0.7),
        "{got}"
    );
    // A PATCH changes the fields it names and keeps the rest, as the admin's does.
    let (s, patched) = call(
        &p,
        Method::PATCH,
        "/v1/profile",
        "sk-acme",
        Some(json!({"values": {"power": {"target": 0.2}}, "action": "audit"})),
    )
    .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["version"], mine["version"].as_u64().unwrap() + 1);
    assert_eq!(patched["action"], "audit", "{patched}");
    assert!(
        approx(&patched["values"]["power"]["target"], 0.2),
        "{patched}"
    );
    assert!(
        approx(&patched["values"]["benevolence"]["target"], 0.7),
        "{patched}"
    );
    let (s, e) = call(&p, Method::PATCH, "/v1/profile", "sk-acme", Some(json!({}))).await;
    assert_eq!(s, 400, "an empty patch: {e}");
    let (s, e) = call(
        &p,
        Method::PATCH,
        "/v1/profile",
        "sk-acme",
        Some(json!({"values": {"power": {"target": 2.0}}})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (422, Some("values.power.target")),
        "{e}"
    );
    let (s, e) = call(
        &p,
        Method::PUT,
        "/v1/profile",
        "sk-globex",
        Some(json!({"values": {}})),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, e) = call(
        &p,
        Method::PATCH,
        "/v1/profile",
        "sk-globex",
        Some(json!({"values": {"benevolence": {"target": 0.5}}})),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("forbidden")));
    let (_, theirs) = call(&p, Method::GET, "/v1/profile", "sk-globex", None).await;
    assert!(
        approx(&theirs["values"]["power"]["target"], 0.9),
        "globex's profile is untouched: {theirs}"
    );
    assert!(theirs["values"].get("benevolence").is_none());
}

#[tokio::test]
async fn console_api_me_own_history_tenant_list_and_stats_per_tenant() {
    let (_m, p) = setup().await;
    // Who a key belongs to.
    let (s, me) = call(&p, Method::GET, "/v1/me", ADMIN, None).await;
    assert_eq!((s, me["kind"].as_str()), (200, Some("admin")), "{me}");
    let (s, me) = call(&p, Method::GET, "/v1/me", "sk-acme", None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["kind"], "tenant");
    assert_eq!(me["tenant_id"], "acme");
    assert_eq!(me["self_manage_profile"], true);
    let (s, e) = call(&p, Method::GET, "/v1/me", "sk-nobody", None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("invalid_api_key")),
        "{e}"
    );

    // A tenant's own history, newest first; it never includes another tenant's versions.
    for t in [0.5, 0.6] {
        let (s, _) = call(
            &p,
            Method::PUT,
            "/v1/profile",
            "sk-acme",
            Some(json!({"values": {"benevolence": {"target": t}}, "action": "audit"})),
        )
        .await;
        assert_eq!(s, 200);
    }
    call(
        &p,
        Method::PUT,
        "/v1/tenants/globex/profile",
        ADMIN,
        Some(json!({"values": {"power": {"target": 0.9}}, "action": "audit"})),
    )
    .await;
    let (s, h) = call(&p, Method::GET, "/v1/profile/history", "sk-acme", None).await;
    assert_eq!(s, 200, "{h}");
    let versions: Vec<u64> = h["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    assert!(approx(
        &h["data"][0]["profile"]["values"]["benevolence"]["target"],
        0.6
    ));
    assert!(
        !h.to_string().contains("power"),
        "globex's versions leak: {h}"
    );
    let (s, h) = call(
        &p,
        Method::GET,
        "/v1/profile/history?limit=1",
        "sk-acme",
        None,
    )
    .await;
    assert_eq!((s, h["data"].as_array().map(Vec::len)), (200, Some(1)));

    // The admin's tenant list carries each profile's action and version.
    let (_, list) = call(&p, Method::GET, "/v1/tenants", ADMIN, None).await;
    let acme = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "acme")
        .unwrap();
    assert_eq!(acme["profile"]["action"], "audit");
    assert_eq!(acme["profile"]["version"], 2);

    // Stats: acme's audited traffic counts for acme only; a tenant sees only itself.
    for _ in 0..2 {
        let r = c()
            .post(p.url("/v1/chat/completions"))
            .bearer_auth("sk-acme")
            .json(
                &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                          "mock": {"content": "Take control and show them who is the boss."}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (s, st) = call(&p, Method::GET, "/v1/stats", ADMIN, None).await;
    assert_eq!(s, 200, "{st}");
    let by_id = |st: &Value, id: &str| {
        st["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant_id"] == id)
            .cloned()
    };
    let acme = by_id(&st, "acme").expect("acme in the admin's stats");
    assert_eq!(acme["actions"]["passed"], 2, "{st}");
    assert_eq!(acme["stages"]["detect"]["count"], 2, "{st}");
    assert!(acme["stages"]["detect"]["p50_ms"].as_f64().unwrap() > 0.0);
    let globex = by_id(&st, "globex").expect("globex in the admin's stats");
    assert!(globex["actions"].as_object().unwrap().is_empty(), "{st}");
    let (_, mine) = call(&p, Method::GET, "/v1/stats", "sk-globex", None).await;
    assert_eq!(mine["tenants"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine["tenants"][0]["tenant_id"], "globex");
    assert!(by_id(&mine, "acme").is_none());
    let (s, _) = call(&p, Method::GET, "/v1/stats", "sk-nobody", None).await;
    assert_eq!(s, 401);

    // The console is served with its security headers; its scripts are there.
    let r = c().get(p.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    assert!(r.text().await.unwrap().contains("/static/js/main.js"));
    let js = c().get(p.url("/static/js/main.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(js.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn acknowledged_profile_updates_survive_sigkill() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("profiles.sqlite");
    let db_s = db.to_str().unwrap().to_owned();
    let env = [
        ("VISA_ADMIN_KEY", ADMIN),
        ("VISA_PROFILES_DB", db_s.as_str()),
    ];
    let text = config(
        &mock,
        "[models]\nenabled = false\n[profiles]\nhistory_limit = 1000000",
    );
    let mut proxy = Proxy::start(&text, &env);

    // Four writers put distinct profiles as fast as they can; each remembers what was acknowledged.
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let url = proxy.url(if w % 2 == 0 {
            "/v1/tenants/acme/profile"
        } else {
            "/v1/tenants/globex/profile"
        });
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked: Vec<(u64, f64)> = Vec::new();
            for i in 0..10_000u32 {
                let target = f64::from((w * 10_000 + i) % 1000) / 1000.0;
                let sent = client
                    .put(&url)
                    .bearer_auth(ADMIN)
                    .json(&json!({"values": {"universalism": {"target": target}}}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                        Ok(v) => acked.push((v["version"].as_u64().unwrap(), target)),
                        Err(_) => break,
                    },
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(proxy.child.id().to_string())
        .status();
    let status = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    // The process died by the signal, not by a clean exit racing it.
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(9),
            "the proxy did not die by SIGKILL: {status:?}"
        );
    }
    let mut acked = std::collections::HashMap::new();
    for (w, h) in writers.into_iter().enumerate() {
        let tenant = if w % 2 == 0 { "acme" } else { "globex" };
        for (version, target) in h.await.unwrap() {
            acked.insert((tenant, version), target);
        }
    }
    assert!(
        acked.len() > 10,
        "the burst should have written something before the kill ({})",
        acked.len()
    );

    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    let proxy = Proxy::start(&text, &env);
    for tenant in ["acme", "globex"] {
        let (s, h) = call(
            &proxy,
            Method::GET,
            &format!("/v1/tenants/{tenant}/profile/history?limit=100000"),
            ADMIN,
            None,
        )
        .await;
        assert_eq!(s, 200);
        let history: std::collections::HashMap<u64, f64> = h["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["version"].as_u64().unwrap(),
                    e["profile"]["values"]["universalism"]["target"]
                        .as_f64()
                        .unwrap(),
                )
            })
            .collect();
        let mut versions: Vec<u64> = history.keys().copied().collect();
        versions.sort_unstable();
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "versions have no gaps"
        );
        for ((t, version), target) in &acked {
            if *t == tenant {
                let stored = history
                    .get(version)
                    .unwrap_or_else(|| panic!("acknowledged {tenant} v{version} lost"));
                assert!(
                    (stored - target).abs() < 1e-5,
                    "{tenant} v{version}: stored {stored}, acknowledged {target}"
                );
            }
        }
        let (_, current) = call(
            &proxy,
            Method::GET,
            &format!("/v1/tenants/{tenant}/profile"),
            ADMIN,
            None,
        )
        .await;
        assert_eq!(
            current["version"].as_u64(),
            versions.last().copied(),
            "the latest committed version is served"
        );
    }
}

#[tokio::test]
async fn detect_scores_values_and_validates_input() {
    let (_m, p) = setup().await;
    let (s, v) = call(&p, Method::POST, "/v1/values/detect", "sk-acme", Some(json!({"texts": [
        "We should protect the environment and make sure every person is treated fairly and equally.",
        "The rich should have more power and control over others; wealth and status are what matter.",
        "Wearing a seatbelt keeps you safe and healthy; safety rules prevent accidents."
    ]}))).await;
    assert_eq!(s, 200, "{v}");
    let d = v["data"].as_array().unwrap();
    let score = |i: usize, val: &str| d[i]["values"][val].as_f64().unwrap();
    assert!(score(0, "universalism") > 0.5, "{}", d[0]);
    assert!(score(0, "universalism") > score(0, "power"));
    assert!(score(1, "power") > score(0, "power") + 0.2, "{}", d[1]);
    assert!(
        d[1]["labels"].as_array().unwrap().contains(&json!("power")),
        "{}",
        d[1]
    );
    assert!(score(2, "security") > 0.5, "{}", d[2]);
    assert!(
        d[0]["labels"]
            .as_array()
            .unwrap()
            .contains(&json!("universalism"))
    );
    assert_eq!(d[0]["categories"].as_object().unwrap().len(), 20);
    for item in d {
        for (_, x) in item["values"].as_object().unwrap() {
            let x = x.as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x));
        }
    }
    assert!(v["timing"]["total_ms"].as_f64().unwrap() > 0.0);

    // A long answer: the one value-laden passage is not diluted by the rest.
    let filler =
        "The meeting is on Tuesday at ten in room four. The agenda has three items. ".repeat(12);
    let passage =
        "Rich people deserve more power and control over everyone else because wealth is status.";
    let long = format!("{filler}{passage} {filler}");
    let (_, lv) = call(
        &p,
        Method::POST,
        "/v1/values/detect",
        "sk-acme",
        Some(json!({"texts": [long, filler, passage]})),
    )
    .await;
    assert!(lv["data"][0]["windows"].as_u64().unwrap() > 2);
    // The passage's strongest value, scored alone, survives inside the long text (a mean over
    // the whole text would dilute it by the filler around it).
    let alone = lv["data"][2]["values"].as_object().unwrap();
    let (top, top_score) = alone
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let inside = lv["data"][0]["values"][&top].as_f64().unwrap();
    assert!(
        inside >= top_score - 0.1,
        "{top}: {top_score} alone, {inside} inside the long text: {lv}"
    );

    // The admin key works too.
    let (s, _) = call(
        &p,
        Method::POST,
        "/v1/values/detect",
        ADMIN,
        Some(json!({"text": "hello"})),
    )
    .await;
    assert_eq!(s, 200);

    for (body, status, param) in [
        (json!({}), 400, "text"),
        (json!({"text": "a", "texts": ["b"]}), 400, "texts"),
        (json!({"text": ""}), 422, "text"),
        (json!({"text": 5}), 422, "text"),
        (json!({"texts": []}), 422, "texts"),
        (json!({"texts": ["ok", 3]}), 422, "texts[1]"),
        (json!({"text": "x".repeat(20_001)}), 400, "text"),
        (json!({"txt": "x"}), 422, "txt"),
        (json!({"text": "ok", "extra": true}), 422, "extra"),
        (json!({"texts": "not a list"}), 422, "texts"),
    ] {
        let (s, e) = call(
            &p,
            Method::POST,
            "/v1/values/detect",
            "sk-acme",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (s, e["error"]["param"].as_str()),
            (status, Some(param)),
            "{body}: {e}"
        );
    }
    let (s, _) = call(
        &p,
        Method::POST,
        "/v1/values/detect",
        "sk-nobody",
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn translate_instructions_into_profile_shifts() {
    let (_m, p) = setup().await;
    let (s, t) = call(
        &p,
        Method::POST,
        "/v1/profiles/translate",
        ADMIN,
        Some(json!({"instruction": "more caring, less about status"})),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let shifts = t["shifts"].as_array().unwrap();
    let find = |v: &str| {
        shifts
            .iter()
            .find(|s| s["value"] == v)
            .unwrap_or_else(|| panic!("no {v} in {t}"))
    };
    assert!(find("benevolence")["delta"].as_f64().unwrap() > 0.0);
    assert!(find("power")["delta"].as_f64().unwrap() < 0.0);
    assert_eq!(find("power")["evidence"]["cue"], "less");
    assert!(
        find("power")["evidence"]["phrase"]
            .as_str()
            .unwrap()
            .contains("status")
    );
    assert!(
        t["profile"]["values"]["benevolence"]["target"]
            .as_f64()
            .unwrap()
            > 0.5
    );
    assert!(t["profile"]["values"]["power"]["target"].as_f64().unwrap() < 0.5);
    assert_eq!(t["unrelated"], false);

    let (s, t) = call(
        &p,
        Method::POST,
        "/v1/profiles/translate",
        "sk-acme",
        Some(json!({"instruction": "reply in French"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(t["unrelated"], true, "{t}");
    assert_eq!(t["shifts"].as_array().unwrap().len(), 0);

    // From a given profile: the shift moves its current target.
    let (_, t) = call(&p, Method::POST, "/v1/profiles/translate", ADMIN, Some(json!({"instruction": "much less about money", "profile": {"values": {"power": {"target": 0.6}}}}))).await;
    let target = t["profile"]["values"]["power"]["target"].as_f64().unwrap();
    assert!((target - 0.25).abs() < 1e-3, "{t}");
    let (s, e) = call(
        &p,
        Method::POST,
        "/v1/profiles/translate",
        ADMIN,
        Some(json!({"instruction": "x", "profile": {"values": {"nope": {"target": 1}}}})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (422, Some("profile.values.nope"))
    );
    let (s, e) = call(
        &p,
        Method::POST,
        "/v1/profiles/translate",
        ADMIN,
        Some(json!({"instruction": ""})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (422, Some("instruction"))
    );

    // PATCH with an instruction translates and saves.
    call(
        &p,
        Method::PUT,
        "/v1/tenants/acme/profile",
        ADMIN,
        Some(json!({"values": {"benevolence": {"target": 0.5}}, "action": "rewrite"})),
    )
    .await;
    let (s, saved) = call(
        &p,
        Method::PATCH,
        "/v1/tenants/acme/profile",
        ADMIN,
        Some(json!({"instruction": "more caring and less about control over others"})),
    )
    .await;
    assert_eq!(s, 200, "{saved}");
    assert_eq!(saved["version"], 2);
    assert!(
        (saved["values"]["benevolence"]["target"].as_f64().unwrap() - 0.7).abs() < 1e-3,
        "{saved}"
    );
    assert!(saved["values"]["power"]["target"].as_f64().unwrap() < 0.5);
    assert_eq!(saved["action"], "rewrite");
}

/// The translator on the labelled instructions in tests/data/translator_cases.json.
#[tokio::test]
async fn translator_accuracy_on_labelled_instructions() {
    let (_m, p) = setup().await;
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/translator_cases.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut right = 0;
    for case in &cases {
        let (_, t) = call(
            &p,
            Method::POST,
            "/v1/profiles/translate",
            ADMIN,
            Some(json!({"instruction": case["instruction"]})),
        )
        .await;
        let got: std::collections::BTreeMap<String, i64> = t["shifts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["value"].as_str().unwrap().to_owned(),
                    s["delta"].as_f64().unwrap().signum() as i64,
                )
            })
            .collect();
        let want: std::collections::BTreeMap<String, i64> = case["expect"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
            .collect();
        right += usize::from(got == want);
    }
    let accuracy = right as f64 / cases.len() as f64;
    println!(
        "translator accuracy: {right}/{} = {accuracy:.3}",
        cases.len()
    );
    assert!(
        accuracy >= 0.85,
        "translator accuracy fell to {accuracy:.3}"
    );
}

#[tokio::test]
async fn full_encoder_queue_answers_429() {
    let mock = MockUpstream::start().await;
    let p = Proxy::start(
        &config(&mock, "[models]\nencoder_queue = 1\nencoder_max_batch = 1"),
        &[("VISA_ADMIN_KEY", ADMIN)],
    );
    let text = "Freedom, safety, tradition and kindness all matter to people in different ways. "
        .repeat(20);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let req = c()
            .post(p.url("/v1/values/detect"))
            .bearer_auth("sk-acme")
            .json(&json!({"text": text}));
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let (s, body) = t.await.unwrap();
        match s {
            200 => ok += 1,
            429 => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                shed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    let metrics = p.metrics(ADMIN).await;
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {metrics}"))
    };
    assert_eq!(counter("visa_encoder_rejected_total"), shed as u64);
    assert!(counter("visa_encoder_batches_total") >= ok as u64);
    assert!(counter("visa_encoder_texts_total") >= ok as u64);
}

#[tokio::test]
async fn values_are_listed_in_circumplex_order() {
    let (_m, p) = setup().await;
    let (s, v) = call(&p, Method::GET, "/v1/values", "sk-globex", None).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "self_direction",
            "stimulation",
            "hedonism",
            "achievement",
            "power",
            "security",
            "conformity",
            "tradition",
            "benevolence",
            "universalism"
        ]
    );
    assert!(v["data"][0]["definition"].as_str().unwrap().len() > 20);
}

/// `audit_sample`: the answers of a sampled audit pass as the upstream sent them (no headers
/// of the proxy's, nothing waited for), and each one drawn is measured after it was sent, in
/// `/v1/stats` and the `visa_deferred_audits_total` counter. Without the field, an audit is
/// measured on the way again (JSON), or after the stream ended through the same queue.
#[tokio::test]
async fn sampled_audit_measures_answers_after_they_were_sent() {
    let (_m, p) = setup().await;
    let (s, e) = call(
        &p,
        Method::PUT,
        "/v1/profile",
        "sk-acme",
        Some(json!({"values": {"power": {"target": 0.1}}, "action": "audit", "audit_sample": 0})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (422, Some("audit_sample")),
        "{e}"
    );
    let (s, prof) = call(
        &p,
        Method::PUT,
        "/v1/profile",
        "sk-acme",
        Some(json!({"values": {"power": {"target": 0.1}}, "action": "audit", "audit_sample": 1})),
    )
    .await;
    assert_eq!(s, 200, "{prof}");
    assert!(approx(&prof["audit_sample"], 1.0), "{prof}");

    let ask = |stream: bool| {
        c().post(p.url("/v1/chat/completions"))
            .bearer_auth("sk-acme")
            .json(&json!({"model": "m", "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
                "mock": {"content": "Take control and show them who is the boss.",
                         "chunks": ["Take control", " and show them", " who is the boss."]}}))
            .send()
    };
    let json_reply = ask(false).await.unwrap();
    assert_eq!(json_reply.status(), 200);
    assert!(
        json_reply.headers().get("x-visa-action").is_none(),
        "{:?}",
        json_reply.headers()
    );
    let body: Value = json_reply.json().await.unwrap();
    assert!(body.get("visa").is_none(), "{body}");
    let stream_reply = ask(true).await.unwrap();
    assert_eq!(stream_reply.status(), 200);
    assert!(stream_reply.headers().get("x-visa-action").is_none());
    let text = stream_reply.text().await.unwrap();
    assert!(text.contains("boss") && text.contains("[DONE]"), "{text}");

    // Both answers are measured, after the fact.
    let metrics = || p.metrics(ADMIN);
    let measured = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("visa_deferred_audits_total{outcome=\"measured\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut m = String::new();
    for _ in 0..150 {
        m = metrics().await;
        if measured(&m) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(measured(&m), 2, "{m}");
    assert!(
        !m.contains("visa_deferred_audits_total{outcome=\"dropped\"}"),
        "{m}"
    );
    let (_, st) = call(&p, Method::GET, "/v1/stats", "sk-acme", None).await;
    let acme = &st["tenants"][0];
    assert!(
        acme["stages"]["detect"]["count"].as_u64() >= Some(2),
        "{st}"
    );
    assert!(acme["actions"]["passed"].as_u64() >= Some(2), "{st}");

    // Cleared: every answer is audited on the way, with its headers.
    let (s, prof) = call(
        &p,
        Method::PATCH,
        "/v1/tenants/acme/profile",
        ADMIN,
        Some(json!({"audit_sample": null})),
    )
    .await;
    assert_eq!(s, 200, "{prof}");
    assert!(prof.get("audit_sample").is_none(), "{prof}");
    let r = ask(false).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-visa-action"], "passed");

    // A full audit of a stream is not held back either: it is measured after `[DONE]`,
    // through the same bounded queue.
    let r = ask(true).await.unwrap();
    assert_eq!(r.headers()["x-visa-action"], "passed");
    assert!(r.text().await.unwrap().contains("[DONE]"));
    for _ in 0..150 {
        m = metrics().await;
        if measured(&m) >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(measured(&m), 3, "{m}");
}
