//! The behaviour every profile store promises, run against SQLite and (when the test
//! environment has one) PostgreSQL, so the two backends cannot drift apart.

use std::sync::Arc;

use serde_json::json;

use super::ProfileStore;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::testing::fresh_postgres;
use crate::values::ValueId;
use crate::values::profile::ProfileSpec;

fn spec(target: f32) -> ProfileSpec {
    ProfileSpec::from_json(&json!({"values": {"power": {"target": target}}})).unwrap()
}

fn versions_increase_and_deletions_are_history(s: &dyn ProfileStore) {
    assert_eq!(
        s.append("a", Some(&spec(0.1)), 10, None).unwrap().version,
        1
    );
    assert_eq!(
        s.append("a", Some(&spec(0.2)), 11, None).unwrap().version,
        2
    );
    assert_eq!(
        s.append("b", Some(&spec(0.3)), 12, None).unwrap().version,
        1
    );
    let mut current = s.load_current().unwrap();
    current.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(current.len(), 2);
    assert_eq!(current[0].1.version, 2);
    assert_eq!(current[0].1.values[&ValueId::Power].target, 0.2);
    assert_eq!(s.append("a", None, 13, None).unwrap().version, 3);
    let current = s.load_current().unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].0, "b");
    let h = s.history("a", 10).unwrap();
    assert_eq!(h.iter().map(|e| e.version).collect::<Vec<_>>(), [3, 2, 1]);
    assert!(h[0].profile.is_none());
    assert_eq!(h[1].updated_at, 11);
    assert_eq!(
        h[2].profile.as_ref().unwrap().values[&ValueId::Power].target,
        0.1
    );
    assert_eq!(s.history("a", 1).unwrap().len(), 1);
    assert!(s.history("nobody", 10).unwrap().is_empty());
    // A new profile after a deletion continues the numbering.
    assert_eq!(
        s.append("a", Some(&spec(0.4)), 14, None).unwrap().version,
        4
    );
}

/// A write that names the version it replaces lands only on that version.
fn expected_versions_guard_writes(s: &dyn ProfileStore) {
    assert_eq!(
        s.append("n", Some(&spec(0.1)), 1, Some(0)).unwrap().version,
        1
    );
    let e = s.append("n", Some(&spec(0.2)), 2, Some(0)).unwrap_err();
    assert_eq!(e.conflict, Some(1), "{e}");
    assert_eq!(
        s.history("n", 10).unwrap().len(),
        1,
        "a refused write wrote nothing"
    );
    assert_eq!(s.append("n", None, 3, Some(1)).unwrap().version, 2);
    // After a deletion the deletion is the version to name.
    assert_eq!(
        s.append("n", Some(&spec(0.3)), 4, Some(1))
            .unwrap_err()
            .conflict,
        Some(2)
    );
    assert_eq!(
        s.append("n", Some(&spec(0.3)), 4, Some(2)).unwrap().version,
        3
    );
}

/// Read-modify-write from several connections with the version read as the precondition: each
/// writer retries on a conflict, and no writer's change is lost (every success is a version).
fn compare_and_set_loses_nothing(stores: Vec<Arc<dyn ProfileStore>>) {
    let per_writer = 10;
    let threads: Vec<_> = stores
        .iter()
        .cloned()
        .map(|s| {
            std::thread::spawn(move || {
                let (mut done, mut conflicts) = (0, 0);
                while done < per_writer {
                    let current = s
                        .history("cas", 1)
                        .unwrap()
                        .first()
                        .map_or(0, |e| e.version);
                    match s.append("cas", Some(&spec(0.5)), 1, Some(current)) {
                        Ok(e) => {
                            assert_eq!(e.version, current + 1);
                            done += 1;
                        }
                        Err(e) => {
                            assert!(e.conflict.is_some(), "{e}");
                            conflicts += 1;
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = (stores.len() * per_writer) as u64;
    assert_eq!(stores[0].history("cas", 1).unwrap()[0].version, total);
}

/// Writers on separate connections (as on separate replicas) never lose or repeat a version.
fn concurrent_writers_keep_every_version(stores: Vec<Arc<dyn ProfileStore>>) {
    let per_writer = 15;
    let threads: Vec<_> = stores
        .iter()
        .cloned()
        .enumerate()
        .map(|(w, s)| {
            std::thread::spawn(move || {
                (0..per_writer)
                    .map(|i| {
                        s.append(
                            "t",
                            Some(&spec(0.01 * (w * per_writer + i) as f32)),
                            1,
                            None,
                        )
                        .unwrap()
                        .version
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seen.sort_unstable();
    let total = (stores.len() * per_writer) as u64;
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    let history = stores[0].history("t", 1000).unwrap();
    assert_eq!(history.len() as u64, total);
    assert_eq!(stores[1].load_current().unwrap()[0].1.version, total);
}

#[test]
fn sqlite_keeps_the_contract() {
    versions_increase_and_deletions_are_history(&SqliteStore::in_memory().unwrap());
    expected_versions_guard_writes(&SqliteStore::in_memory().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sqlite");
    let stores: Vec<Arc<dyn ProfileStore>> = (0..2)
        .map(|_| Arc::new(SqliteStore::open(&path).unwrap()) as Arc<dyn ProfileStore>)
        .collect();
    concurrent_writers_keep_every_version(stores.clone());
    compare_and_set_loses_nothing(stores);
}

#[test]
fn postgres_keeps_the_contract() {
    let Some(url) = fresh_postgres() else { return };
    versions_increase_and_deletions_are_history(&PostgresStore::connect(&url).unwrap());
    expected_versions_guard_writes(&PostgresStore::connect(&url).unwrap());
    let url = fresh_postgres().unwrap();
    let stores: Vec<Arc<dyn ProfileStore>> = (0..3)
        .map(|_| Arc::new(PostgresStore::connect(&url).unwrap()) as Arc<dyn ProfileStore>)
        .collect();
    concurrent_writers_keep_every_version(stores.clone());
    compare_and_set_loses_nothing(stores);
}

#[test]
fn postgres_migrations_run_once_from_many_replicas() {
    let Some(url) = fresh_postgres() else { return };
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::connect(&url).map(|_| ()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM visa_schema_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(n as usize, super::postgres::MIGRATIONS_LEN);
    assert_eq!(super::postgres::migrate(&mut c).unwrap(), 0);
}

/// A replica hears of another's commit through the change feed, and after losing its
/// connections (the server kills them) reconnects, reloads, and catches what it missed.
#[test]
fn postgres_change_feed_reaches_the_other_view_and_survives_a_dropped_connection() {
    let Some(url) = fresh_postgres() else { return };
    let a = super::Profiles::open(Arc::new(PostgresStore::connect(&url).unwrap())).unwrap();
    let b_store = Arc::new(PostgresStore::connect(&url).unwrap());
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait("feed connects", &|| a.feed() == super::FeedState::Connected);
    b_store.append("t", Some(&spec(0.7)), 1, None).unwrap();
    wait("a sees version 1", &|| {
        a.get("t").map(|p| p.version) == Some(1)
    });
    b_store.append("t", None, 2, None).unwrap();
    wait("a sees the deletion", &|| a.get("t").is_none());
    b_store.append("t", Some(&spec(0.5)), 3, None).unwrap();
    wait("a sees version 3", &|| {
        a.get("t").map(|p| p.version) == Some(3)
    });

    // Kill every other connection to this database: a's store and a's listener.
    let mut killer = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let killed: i64 = killer
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND application_name = 'visa-proxy'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(killed >= 2, "killed {killed} connections");
    // Written by a fresh connection while a's listener is down or reconnecting.
    let c = PostgresStore::connect(&url).unwrap();
    c.append("t", None, 4, None).unwrap();
    c.append("u", Some(&spec(0.2)), 4, None).unwrap();
    wait("a catches up after reconnecting", &|| {
        a.get("t").is_none() && a.get("u").map(|p| p.version) == Some(1)
    });
    // a's own store reconnects too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let entry = rt.block_on(a.write("t", Some(spec(0.9)), None)).unwrap();
    assert_eq!(entry.version, 5);
    assert_eq!(a.get("t").map(|p| p.version), Some(5));
}
