//! The PostgreSQL profile store, for several replicas sharing one set of profiles: the same
//! append-only versions as SQLite, per-tenant advisory locks so concurrent writers never lose or
//! repeat a version, and `LISTEN/NOTIFY` so every replica hears of a commit within milliseconds.

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::{
    ChangeSink, DecisionArg, HistoryEntry, ProfileChange, ProfileStore, StoreError, Watch,
};
use crate::decisions::{DecisionQuery, DecisionRecord};
use crate::values::Profile;
use crate::values::profile::FieldError;

/// The channel commits are announced on; the payload is `{"tenant": .., "version": ..}`.
pub const CHANNEL: &str = "visa_profile_changes";

/// Held (per transaction) while migrations run, so replicas starting together apply each once.
const MIGRATION_LOCK: i64 = 0x7669_7361_6d69_6772; // "visamigr"

/// Versioned schema changes, applied in order and recorded in `visa_schema_migrations`.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE profile_versions (
            tenant_id  TEXT   NOT NULL,
            version    BIGINT NOT NULL CHECK (version > 0),
            body       TEXT,              -- the profile as JSON; NULL records a deletion
            created_at BIGINT NOT NULL,
            PRIMARY KEY (tenant_id, version)
        );",
    ),
    (
        2,
        "CREATE TABLE decisions (
            id         BIGSERIAL PRIMARY KEY,
            tenant_id  TEXT   NOT NULL,
            created_at BIGINT NOT NULL, -- Unix ms
            action     TEXT   NOT NULL,
            vals       TEXT   NOT NULL, -- ',power,benevolence,'
            body       TEXT   NOT NULL  -- the record as JSON
        );
        CREATE INDEX decisions_by_tenant ON decisions (tenant_id, id);
        CREATE INDEX decisions_by_time ON decisions (created_at);",
    ),
];

#[cfg(test)]
pub const MIGRATIONS_LEN: usize = MIGRATIONS.len();

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e.to_string())
}

/// Parse a libpq connection string (`host=.. user=.. dbname=..` or `postgresql://..`), with a
/// connect timeout unless it names one.
fn parse_config(url: &str) -> Result<postgres::Config, StoreError> {
    let mut config = postgres::Config::from_str(url)
        .map_err(|e| StoreError::new(format!("not a PostgreSQL connection string: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config.application_name("visa-proxy");
    Ok(config)
}

fn connect(config: &postgres::Config) -> Result<Client, StoreError> {
    config
        .connect(NoTls)
        .map_err(|e| StoreError::new(format!("connecting to PostgreSQL: {e}")))
}

/// Apply every migration not yet recorded, under an advisory lock (safe from several replicas at
/// once). Returns how many were applied.
pub fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    let mut tx = client.transaction().map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS visa_schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );",
    )
    .map_err(db_err)?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM visa_schema_migrations", &[])
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .map_err(|e| StoreError::new(format!("migration {version}: {e}")))?;
        tx.execute(
            "INSERT INTO visa_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .map_err(db_err)?;
        applied += 1;
    }
    tx.commit().map_err(db_err)?;
    Ok(applied)
}

pub struct PostgresStore {
    config: postgres::Config,
    /// `None` after the connection was found closed; the next call reconnects.
    client: Mutex<Option<Client>>,
}

impl PostgresStore {
    /// Connect and apply pending migrations. Blocking: call it off the async runtime.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let config = parse_config(url)?;
        let mut client = connect(&config)?;
        migrate(&mut client)?;
        Ok(Self {
            config,
            client: Mutex::new(Some(client)),
        })
    }

    /// Run `op` on a live connection, reconnecting first when the last one closed. When the
    /// connection turns out closed before `op` could send anything (`Retry`), reconnect and try
    /// once more; any other failure is returned as is.
    fn with_client<T>(
        &self,
        mut op: impl FnMut(&mut Client) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut slot = self
            .client
            .lock()
            .map_err(|_| StoreError::new("the database lock is poisoned"))?;
        for attempt in 0..2 {
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = Some(connect(&self.config)?);
            }
            let Some(client) = slot.as_mut() else {
                continue;
            };
            match op(client) {
                Ok(v) => return Ok(v),
                Err(Failure::Retry(e)) if attempt == 0 => {
                    tracing::warn!(error = %e, "PostgreSQL connection lost; reconnecting");
                    *slot = None;
                }
                Err(Failure::Retry(e) | Failure::Final(e)) => {
                    if client.is_closed() {
                        *slot = None;
                    }
                    return Err(db_err(e));
                }
            }
        }
        Err(StoreError::new("PostgreSQL connection lost twice"))
    }
}

/// Why a write was refused without a connection failure.
enum Rejected {
    Field(FieldError),
    Store(StoreError),
}

/// How an operation failed: before anything reached the server on a closed connection (safe to
/// retry), or otherwise.
enum Failure {
    Retry(postgres::Error),
    Final(postgres::Error),
}

fn final_err(e: postgres::Error) -> Failure {
    Failure::Final(e)
}

/// A read can always be retried; so can the first statement of a write on a closed connection
/// (or one the server is shutting down: SQLSTATE class 57P, as `pg_terminate_backend` and a
/// restart send).
fn retry_if_closed(e: postgres::Error) -> Failure {
    if e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("57P")) {
        Failure::Retry(e)
    } else {
        Failure::Final(e)
    }
}

impl ProfileStore for PostgresStore {
    fn insert_decisions(&self, records: &[DecisionRecord]) -> Result<(), StoreError> {
        let rows = records
            .iter()
            .map(super::decision_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.with_client(|c| {
            let mut tx = c.transaction().map_err(retry_if_closed)?;
            let stmt = tx
                .prepare(
                    "INSERT INTO decisions (tenant_id, created_at, action, vals, body)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .map_err(retry_if_closed)?;
            for (r, (body, vals)) in records.iter().zip(&rows) {
                tx.execute(&stmt, &[&r.tenant_id, &r.created_at, &r.action, vals, body])
                    .map_err(final_err)?;
            }
            tx.commit().map_err(final_err)
        })
    }

    fn list_decisions(&self, query: &DecisionQuery) -> Result<Vec<DecisionRecord>, StoreError> {
        let (filter, args) = super::decision_filters(query, |n| format!("${n}"));
        let sql = format!(
            "SELECT id, body FROM decisions {filter} ORDER BY id DESC LIMIT {}",
            query.limit
        );
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = args
            .iter()
            .map(|a| match a {
                DecisionArg::Text(t) => t as &(dyn postgres::types::ToSql + Sync),
                DecisionArg::Int(i) => i as &(dyn postgres::types::ToSql + Sync),
            })
            .collect();
        let rows = self.with_client(|c| c.query(&sql, &params).map_err(retry_if_closed))?;
        rows.iter()
            .map(|r| super::decision_from_row(r.get(0), r.get::<_, &str>(1)))
            .collect()
    }

    fn purge_decisions(&self, before_ms: i64) -> Result<usize, StoreError> {
        let n = self.with_client(|c| {
            c.execute("DELETE FROM decisions WHERE created_at < $1", &[&before_ms])
                .map_err(retry_if_closed)
        })?;
        Ok(n as usize)
    }

    fn load_current(&self) -> Result<Vec<(String, Profile)>, StoreError> {
        let rows = self.with_client(|c| {
            c.query(
                "SELECT DISTINCT ON (tenant_id) tenant_id, version, created_at, body
                 FROM profile_versions ORDER BY tenant_id, version DESC",
                &[],
            )
            .map_err(retry_if_closed)
        })?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(p) = super::decode_entry(r.get(1), r.get(2), r.get(3))?.profile {
                out.push((r.get(0), p));
            }
        }
        Ok(out)
    }

    fn update(
        &self,
        tenant: &str,
        now: i64,
        expected: Option<u64>,
        change: &mut ProfileChange<'_>,
    ) -> Result<Result<HistoryEntry, FieldError>, StoreError> {
        // The outer error is the connection's; the inner one, this write's own (a conflict, a
        // field error from `change`, an unencodable profile).
        let outcome = self.with_client(|c| {
            let mut tx = c.transaction().map_err(retry_if_closed)?;
            // One writer per tenant across every replica: the newest version is read, changed
            // and written under the lock, so two commits never share a number, skip one, or
            // build on a version the other replaced.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&tenant])
                .map_err(retry_if_closed)?;
            let newest = tx
                .query_opt(
                    "SELECT version, created_at, body FROM profile_versions WHERE tenant_id = $1
                     ORDER BY version DESC LIMIT 1",
                    &[&tenant],
                )
                .map_err(final_err)?;
            let newest = match newest
                .map(|r| super::decode_entry(r.get(0), r.get(1), r.get(2)))
                .transpose()
            {
                Ok(n) => n,
                Err(e) => return Ok(Err(Rejected::Store(e))),
            };
            let next = match super::next_version(newest, now, expected, change) {
                Ok(Ok(next)) => next,
                Ok(Err(field)) => return Ok(Err(Rejected::Field(field))),
                Err(e) => return Ok(Err(Rejected::Store(e))),
            };
            let version = next.version;
            tx.execute(
                "INSERT INTO profile_versions (tenant_id, version, body, created_at)
                 VALUES ($1, $2, $3, $4)",
                &[&tenant, &version, &next.body, &now],
            )
            .map_err(final_err)?;
            let payload = serde_json::json!({"tenant": tenant, "version": version}).to_string();
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                .map_err(final_err)?;
            tx.commit().map_err(final_err)?;
            Ok(Ok(next.entry))
        })?;
        match outcome {
            Ok(entry) => Ok(Ok(entry)),
            Err(Rejected::Field(f)) => Ok(Err(f)),
            Err(Rejected::Store(e)) => Err(e),
        }
    }

    fn history(&self, tenant: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self.with_client(|c| {
            c.query(
                "SELECT version, created_at, body FROM profile_versions WHERE tenant_id = $1
                 ORDER BY version DESC LIMIT $2",
                &[&tenant, &limit],
            )
            .map_err(retry_if_closed)
        })?;
        rows.iter()
            .map(|r| super::decode_entry(r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    fn watch(&self, sink: std::sync::Arc<dyn ChangeSink>) -> Result<Option<Watch>, StoreError> {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let config = self.config.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("profile-listen".into())
            .spawn(move || listen(config, sink, flag))
            .map_err(|e| StoreError::new(format!("starting the listener: {e}")))?;
        Ok(Some(Watch::new(stop, thread)))
    }
}

/// The listener: a connection of its own that `LISTEN`s, tells the sink of each commit, and after
/// every (re)connect asks for a full reload, since changes made while it was away were missed.
fn listen(
    config: postgres::Config,
    sink: std::sync::Arc<dyn ChangeSink>,
    stop: std::sync::Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let mut client = match connect(&config).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {CHANNEL}"))
                .map(|()| c)
                .map_err(db_err)
        }) {
            Ok(c) => c,
            Err(e) => {
                sink.connected(false);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "profile listener cannot connect");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        sink.connected(true);
        sink.resync();
        let mut idle = Duration::ZERO;
        'conn: while !stop.load(Ordering::Relaxed) {
            let mut any = false;
            let mut lost = false;
            {
                let mut notes = client.notifications();
                let mut iter = notes.timeout_iter(Duration::from_millis(500));
                loop {
                    match iter.next() {
                        Ok(Some(n)) => {
                            any = true;
                            match serde_json::from_str::<serde_json::Value>(n.payload())
                                .ok()
                                .and_then(|v| v.get("tenant")?.as_str().map(str::to_owned))
                            {
                                Some(tenant) => sink.changed(&tenant),
                                None => sink.resync(),
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "profile listener lost its connection");
                            lost = true;
                            break;
                        }
                    }
                }
            }
            if lost {
                break 'conn;
            }
            if client.is_closed() {
                tracing::warn!("profile listener lost its connection");
                break;
            }
            // A quiet connection is checked now and then, so a silent drop is noticed.
            idle = if any {
                Duration::ZERO
            } else {
                idle + Duration::from_millis(500)
            };
            if idle >= Duration::from_secs(5) {
                idle = Duration::ZERO;
                if let Err(e) = client.is_valid(Duration::from_secs(2)) {
                    tracing::warn!(error = %e, "profile listener connection is not answering");
                    break;
                }
            }
        }
        sink.connected(false);
    }
}
