//! The SQLite profile store: one append-only table of versions, written in transactions with
//! `synchronous = FULL`, so an acknowledged change survives a crash of the process or machine.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{DecisionArg, HistoryEntry, ProfileChange, ProfileStore, StoreError};
use crate::decisions::{DecisionQuery, DecisionRecord};
use crate::values::Profile;
use crate::values::profile::FieldError;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e.to_string())
}

impl SqliteStore {
    /// Open (creating the file and its folder when missing) and migrate.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::new(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError::new(format!("{}: {e}", path.display())))?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(db_err)?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS profile_versions (
                tenant_id  TEXT    NOT NULL,
                version    INTEGER NOT NULL,
                body       TEXT,              -- the profile as JSON; NULL records a deletion
                created_at INTEGER NOT NULL,
                PRIMARY KEY (tenant_id, version)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS decisions (
                id         INTEGER PRIMARY KEY AUTOINCREMENT,
                tenant_id  TEXT    NOT NULL,
                created_at INTEGER NOT NULL, -- Unix ms
                action     TEXT    NOT NULL,
                vals       TEXT    NOT NULL, -- ',power,benevolence,'
                body       TEXT    NOT NULL  -- the record as JSON
            );
            CREATE INDEX IF NOT EXISTS decisions_by_tenant ON decisions (tenant_id, id);
            CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (created_at);",
        )
        .map_err(db_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError::new("the database lock is poisoned"))
    }
}

impl rusqlite::ToSql for DecisionArg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Text(t) => t.to_sql(),
            Self::Int(i) => i.to_sql(),
        }
    }
}

impl ProfileStore for SqliteStore {
    fn insert_decisions(&self, records: &[DecisionRecord]) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO decisions (tenant_id, created_at, action, vals, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db_err)?;
            for r in records {
                let (body, vals) = super::decision_row(r)?;
                stmt.execute(params![r.tenant_id, r.created_at, r.action, vals, body])
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    fn list_decisions(&self, query: &DecisionQuery) -> Result<Vec<DecisionRecord>, StoreError> {
        let (filter, args) = super::decision_filters(query, |n| format!("?{n}"));
        let sql = format!(
            "SELECT id, body FROM decisions {filter} ORDER BY id DESC LIMIT {}",
            query.limit
        );
        let conn = self.lock()?;
        let mut stmt = conn.prepare(&sql).map_err(db_err)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(db_err)?;
            out.push(super::decision_from_row(id, &body)?);
        }
        Ok(out)
    }

    fn purge_decisions(&self, before_ms: i64) -> Result<usize, StoreError> {
        let conn = self.lock()?;
        conn.execute(
            "DELETE FROM decisions WHERE created_at < ?1",
            params![before_ms],
        )
        .map_err(db_err)
    }

    fn load_current(&self) -> Result<Vec<(String, Profile)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare(
                "SELECT v.tenant_id, v.version, v.created_at, v.body FROM profile_versions v
                 JOIN (SELECT tenant_id, MAX(version) AS version FROM profile_versions GROUP BY tenant_id) m
                   ON v.tenant_id = m.tenant_id AND v.version = m.version",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, version, created_at, body) = row.map_err(db_err)?;
            if let Some(p) = super::decode_entry(version, created_at, body)?.profile {
                out.push((tenant, p));
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
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let newest = tx
            .query_row(
                "SELECT version, created_at, body FROM profile_versions WHERE tenant_id = ?1
                 ORDER BY version DESC LIMIT 1",
                params![tenant],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(db_err)?;
        let newest = newest
            .map(|(v, at, body)| super::decode_entry(v, at, body))
            .transpose()?;
        let next = match super::next_version(newest, now, expected, change)? {
            Ok(next) => next,
            Err(field) => return Ok(Err(field)),
        };
        tx.execute(
            "INSERT INTO profile_versions (tenant_id, version, body, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![tenant, next.version, next.body, now],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Ok(next.entry))
    }

    fn history(&self, tenant: &str, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare(
                "SELECT version, created_at, body FROM profile_versions WHERE tenant_id = ?1
                 ORDER BY version DESC LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![tenant, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (version, created_at, body) = row.map_err(db_err)?;
            out.push(super::decode_entry(version, created_at, body)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::ValueId;
    use serde_json::json;

    // The behaviour both stores share is tested in `store::contract`.

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/profiles.sqlite");
        let spec = crate::values::profile::ProfileSpec::from_json(
            &json!({"values": {"benevolence": {"target": 0.9}}, "action": "rewrite"}),
        )
        .unwrap();
        {
            let s = SqliteStore::open(&path).unwrap();
            s.append("t", Some(&spec), 1, None).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let current = s.load_current().unwrap();
        assert_eq!(current[0].1.values[&ValueId::Benevolence].target, 0.9);
        assert_eq!(current[0].1.version, 1);
    }
}
