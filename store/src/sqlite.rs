//! The SQLite backend: one file in the data directory, schema migrated on open.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::broadcast;

use crate::{
    Account, CaRecord, Change, ConnectionRecord, NodeRecord, ScriptRecord, Store, StoreError,
    StoreResult, Tunnel, VpcService, rfc3339,
};

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE tunnels (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts(id),
    name               TEXT NOT NULL,
    secret_hash        BLOB NOT NULL,
    created_at         TEXT NOT NULL,
    first_connected_at TEXT
);
CREATE INDEX tunnels_by_account ON tunnels(account_id, created_at);
CREATE TABLE connections (
    id             TEXT PRIMARY KEY,
    tunnel_id      TEXT NOT NULL,
    connector_id   TEXT NOT NULL,
    client_version TEXT NOT NULL,
    edge_name      TEXT NOT NULL,
    origin_ip      TEXT NOT NULL,
    opened_at      TEXT NOT NULL,
    conn_index     INTEGER NOT NULL,
    ha_connections INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
CREATE INDEX connections_by_tunnel ON connections(tunnel_id);
"#,
    r#"
CREATE TABLE services (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    tunnel_id  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX services_by_account ON services(account_id, created_at);
CREATE INDEX services_by_tunnel ON services(tunnel_id);
"#,
    r#"
ALTER TABLE tunnels ADD COLUMN sealed_secret BLOB;
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name       TEXT NOT NULL,
    hash       BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE scripts (
    name       TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    tag        TEXT NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX scripts_by_account ON scripts(account_id);
CREATE TABLE script_services (
    script     TEXT NOT NULL REFERENCES scripts(name) ON DELETE CASCADE,
    service_id TEXT NOT NULL,
    PRIMARY KEY (service_id, script)
);
CREATE TABLE changes (
    rev    INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    kind   TEXT NOT NULL,
    id     TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE nodes (
    name          TEXT PRIMARY KEY,
    body          TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE cluster_ca (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_pem  TEXT NOT NULL
);
"#,
];

/// How often a store looks for changes other processes wrote.
const CHANGE_POLL: Duration = Duration::from_millis(100);
/// Change-log rows kept; older ones are trimmed (a reader that falls further
/// behind is told [`Change::All`]).
const CHANGE_LOG_KEEP: i64 = 10_000;

/// The embedded store: SQLite in a file (or in memory for tests).
///
/// Changes are published to this process's watchers when the write returns,
/// and logged in the database, where stores opened by other processes on the
/// same file find them (they poll the log every 100 ms).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    changes: broadcast::Sender<Change>,
    /// Tells this store's own change-log rows from other processes'.
    origin: Arc<str>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        Self::init(conn)
    }

    /// A private in-memory database (tests, throwaway demos).
    pub fn open_in_memory() -> StoreResult<Self> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(mut conn: Connection) -> StoreResult<Self> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        migrate(&mut conn)?;
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(rev), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        let (changes, _) = broadcast::channel(256);
        let store = SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            changes,
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(follow_log(
                Arc::downgrade(&store.conn),
                store.changes.clone(),
                store.origin.clone(),
                last,
            ));
        }
        Ok(store)
    }

    /// Runs `f` on the connection off the async threads.
    async fn with<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
            f(&guard).map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    /// Tells this process's watchers at once, and logs the change for
    /// other processes' (a failed log write costs them only freshness).
    async fn publish(&self, change: Change) {
        // No subscriber is fine.
        let _ = self.changes.send(change.clone());
        let (kind, id) = match change {
            Change::Tunnel(id) => ("tunnel", id),
            Change::Service(id) => ("service", id),
            Change::Script(id) => ("script", id),
            // Lease refreshes are too frequent to log; the registry is read
            // from the store, never cached across processes.
            Change::Connections(_) | Change::All => return,
        };
        let origin = self.origin.clone();
        let logged = self
            .with(move |c| {
                c.execute(
                    "INSERT INTO changes (origin, kind, id) VALUES (?1, ?2, ?3)",
                    params![&*origin, kind, id],
                )?;
                let rev = c.last_insert_rowid();
                if rev % 1000 == 0 {
                    c.execute(
                        "DELETE FROM changes WHERE rev <= ?1",
                        [rev - CHANGE_LOG_KEEP],
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = logged {
            tracing::warn!(error = %e, "change not logged for other processes");
        }
    }
}

/// Publishes the changes other processes log, until the store is dropped.
async fn follow_log(
    conn: std::sync::Weak<Mutex<Connection>>,
    changes: broadcast::Sender<Change>,
    origin: Arc<str>,
    mut last: i64,
) {
    let mut tick = tokio::time::interval(CHANGE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(conn) = conn.upgrade() else { return };
        let origin = origin.clone();
        let read = tokio::task::spawn_blocking(move || -> rusqlite::Result<_> {
            let Ok(c) = conn.lock() else {
                return Ok((0, Vec::new()));
            };
            let oldest: i64 =
                c.query_row("SELECT COALESCE(MIN(rev), 0) FROM changes", [], |r| {
                    r.get(0)
                })?;
            let mut st = c.prepare_cached(
                "SELECT rev, origin, kind, id FROM changes WHERE rev > ?1 ORDER BY rev LIMIT 1000",
            )?;
            let rows = st
                .query_map([last], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((oldest, rows))
        })
        .await;
        let (oldest, rows) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the store's change log");
                continue;
            }
            Err(_) => return,
        };
        if oldest > last + 1 && last > 0 {
            // Rows this reader never saw were trimmed.
            let _ = changes.send(Change::All);
        }
        for (rev, from, kind, id) in rows {
            last = rev;
            if *from == *origin {
                continue;
            }
            let change = match kind.as_str() {
                "tunnel" => Change::Tunnel(id),
                "service" => Change::Service(id),
                "script" => Change::Script(id),
                _ => Change::All,
            };
            let _ = changes.send(change);
        }
    }
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let applied: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(backend)? as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database is at schema version {applied}, newer than this build ({}); upgrade Warren",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

fn tunnel_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Tunnel> {
    let hash: Vec<u8> = r.get(3)?;
    let mut secret_hash = [0u8; 32];
    if hash.len() == 32 {
        secret_hash.copy_from_slice(&hash);
    }
    Ok(Tunnel {
        id: r.get(0)?,
        account_id: r.get(1)?,
        name: r.get(2)?,
        secret_hash,
        created_at: r.get(4)?,
        first_connected_at: r.get(5)?,
        sealed_secret: r.get(6)?,
    })
}

const TUNNEL_COLUMNS: &str =
    "id, account_id, name, secret_hash, created_at, first_connected_at, sealed_secret";

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, name: &str) -> StoreResult<Account> {
        let account = Account {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_owned(),
            created_at: rfc3339(SystemTime::now()),
        };
        let a = account.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO accounts (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![a.id, a.name, a.created_at],
            )
        })
        .await?;
        Ok(account)
    }

    async fn get_account(&self, id: &str) -> StoreResult<Option<Account>> {
        let id = id.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT id, name, created_at FROM accounts WHERE id = ?1",
                [id],
                |r| {
                    Ok(Account {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn list_accounts(&self) -> StoreResult<Vec<Account>> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT id, name, created_at FROM accounts ORDER BY created_at, id")?;
            let rows = st.query_map([], |r| {
                Ok(Account {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn create_tunnel(
        &self,
        account_id: &str,
        name: &str,
        secret_hash: [u8; 32],
        sealed_secret: Option<Vec<u8>>,
    ) -> StoreResult<Tunnel> {
        if self.get_account(account_id).await?.is_none() {
            return Err(StoreError::NotFound("account"));
        }
        let tunnel = Tunnel {
            id: uuid::Uuid::now_v7().to_string(),
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            secret_hash,
            created_at: rfc3339(SystemTime::now()),
            first_connected_at: None,
            sealed_secret,
        };
        let t = tunnel.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO tunnels (id, account_id, name, secret_hash, created_at, sealed_secret)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    t.id,
                    t.account_id,
                    t.name,
                    &t.secret_hash[..],
                    t.created_at,
                    t.sealed_secret
                ],
            )
        })
        .await?;
        self.publish(Change::Tunnel(tunnel.id.clone())).await;
        Ok(tunnel)
    }

    async fn get_tunnel(&self, tunnel_id: &str) -> StoreResult<Option<Tunnel>> {
        let id = tunnel_id.to_owned();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE id = ?1"),
                [id],
                tunnel_from_row,
            )
            .optional()
        })
        .await
    }

    async fn list_tunnels(&self, account_id: &str) -> StoreResult<Vec<Tunnel>> {
        let account = account_id.to_owned();
        self.with(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE account_id = ?1 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([account], tunnel_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn delete_tunnel(&self, account_id: &str, tunnel_id: &str) -> StoreResult<bool> {
        let (account, id) = (account_id.to_owned(), tunnel_id.to_owned());
        let deleted = self
            .with(move |c| {
                c.execute(
                    "DELETE FROM tunnels WHERE id = ?1 AND account_id = ?2",
                    params![id, account],
                )
            })
            .await?
            > 0;
        if deleted {
            self.publish(Change::Tunnel(tunnel_id.to_owned())).await;
        }
        Ok(deleted)
    }

    async fn put_connection(&self, record: &ConnectionRecord, lease: Duration) -> StoreResult<()> {
        let r = record.clone();
        let expires = now_ms() + lease.as_millis() as i64;
        self.with(move |c| {
            c.execute(
                "INSERT INTO connections (id, tunnel_id, connector_id, client_version, edge_name, origin_ip,
                     opened_at, conn_index, ha_connections, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(id) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
                params![
                    r.id,
                    r.tunnel_id,
                    r.connector_id,
                    r.client_version,
                    r.edge_name,
                    r.origin_ip,
                    r.opened_at,
                    r.conn_index,
                    r.ha_connections,
                    expires
                ],
            )?;
            c.execute(
                "UPDATE tunnels SET first_connected_at = COALESCE(first_connected_at, ?2) WHERE id = ?1",
                params![r.tunnel_id, r.opened_at],
            )
        })
        .await?;
        self.publish(Change::Connections(record.tunnel_id.clone()))
            .await;
        Ok(())
    }

    async fn remove_connection(&self, connection_id: &str) -> StoreResult<()> {
        let id = connection_id.to_owned();
        let tunnel = self
            .with(move |c| {
                let tunnel: Option<String> = c
                    .query_row(
                        "SELECT tunnel_id FROM connections WHERE id = ?1",
                        [&id],
                        |r| r.get(0),
                    )
                    .optional()?;
                c.execute("DELETE FROM connections WHERE id = ?1", [&id])?;
                Ok(tunnel)
            })
            .await?;
        if let Some(t) = tunnel {
            self.publish(Change::Connections(t)).await;
        }
        Ok(())
    }

    async fn list_connections(&self, tunnel_id: &str) -> StoreResult<Vec<ConnectionRecord>> {
        let id = tunnel_id.to_owned();
        let now = now_ms();
        self.with(move |c| {
            c.execute("DELETE FROM connections WHERE expires_at_ms <= ?1", [now])?;
            let mut st = c.prepare(
                "SELECT id, tunnel_id, connector_id, client_version, edge_name, origin_ip, opened_at,
                        conn_index, ha_connections
                 FROM connections WHERE tunnel_id = ?1 ORDER BY opened_at, id",
            )?;
            let rows = st.query_map([id], |r| {
                Ok(ConnectionRecord {
                    id: r.get(0)?,
                    tunnel_id: r.get(1)?,
                    connector_id: r.get(2)?,
                    client_version: r.get(3)?,
                    edge_name: r.get(4)?,
                    origin_ip: r.get(5)?,
                    opened_at: r.get(6)?,
                    conn_index: r.get(7)?,
                    ha_connections: r.get(8)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn create_service(&self, service: &VpcService) -> StoreResult<()> {
        let body = serde_json::to_string(service).map_err(backend)?;
        let v = service.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO services (id, account_id, tunnel_id, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![v.id, v.account_id, v.host.tunnel_id(), v.created_at, body],
            )
        })
        .await?;
        self.publish(Change::Service(service.id.clone())).await;
        Ok(())
    }

    async fn get_service(&self, service_id: &str) -> StoreResult<Option<VpcService>> {
        let id = service_id.to_owned();
        let body: Option<String> = self
            .with(move |c| {
                c.query_row("SELECT body FROM services WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await?;
        body.map(|b| serde_json::from_str(&b).map_err(backend))
            .transpose()
    }

    async fn list_services(&self, account_id: &str) -> StoreResult<Vec<VpcService>> {
        let account = account_id.to_owned();
        let bodies: Vec<String> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT body FROM services WHERE account_id = ?1 ORDER BY created_at, id",
                )?;
                let rows = st.query_map([account], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(backend))
            .collect()
    }

    async fn replace_service(&self, service: &VpcService) -> StoreResult<bool> {
        let body = serde_json::to_string(service).map_err(backend)?;
        let v = service.clone();
        let replaced = self
            .with(move |c| {
                c.execute(
                    "UPDATE services SET tunnel_id = ?3, body = ?4 WHERE id = ?1 AND account_id = ?2",
                    params![v.id, v.account_id, v.host.tunnel_id(), body],
                )
            })
            .await?
            > 0;
        if replaced {
            self.publish(Change::Service(service.id.clone())).await;
        }
        Ok(replaced)
    }

    async fn delete_service(&self, account_id: &str, service_id: &str) -> StoreResult<bool> {
        let (account, id) = (account_id.to_owned(), service_id.to_owned());
        let deleted = self
            .with(move |c| {
                c.execute(
                    "DELETE FROM services WHERE id = ?1 AND account_id = ?2",
                    params![id, account],
                )
            })
            .await?
            > 0;
        if deleted {
            self.publish(Change::Service(service_id.to_owned())).await;
        }
        Ok(deleted)
    }

    async fn services_using_tunnel(&self, tunnel_id: &str) -> StoreResult<usize> {
        let id = tunnel_id.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM services WHERE tunnel_id = ?1",
                [id],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n as usize)
    }

    async fn put_node(&self, node: &NodeRecord, lease: Duration) -> StoreResult<()> {
        let body = serde_json::to_string(node).map_err(backend)?;
        let name = node.name.clone();
        let expires = now_ms() + lease.as_millis() as i64;
        self.with(move |c| {
            c.execute(
                "INSERT INTO nodes (name, body, expires_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body,
                     expires_at_ms = excluded.expires_at_ms",
                params![name, body, expires],
            )
        })
        .await?;
        Ok(())
    }

    async fn remove_node(&self, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        self.with(move |c| c.execute("DELETE FROM nodes WHERE name = ?1", [name]))
            .await?;
        Ok(())
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        let now = now_ms();
        let bodies: Vec<String> = self
            .with(move |c| {
                c.execute("DELETE FROM nodes WHERE expires_at_ms <= ?1", [now])?;
                let mut st = c.prepare("SELECT body FROM nodes ORDER BY name")?;
                let rows = st.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(backend))
            .collect()
    }

    async fn create_api_token(
        &self,
        account_id: &str,
        name: &str,
        hash: [u8; 32],
    ) -> StoreResult<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (i, a, n, now) = (
            id.clone(),
            account_id.to_owned(),
            name.to_owned(),
            rfc3339(SystemTime::now()),
        );
        self.with(move |c| {
            c.execute(
                "INSERT INTO api_tokens (id, account_id, name, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![i, a, n, &hash[..], now],
            )
        })
        .await?;
        Ok(id)
    }

    async fn account_for_token(&self, hash: [u8; 32]) -> StoreResult<Option<String>> {
        self.with(move |c| {
            c.query_row(
                "SELECT account_id FROM api_tokens WHERE hash = ?1",
                [&hash[..]],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    async fn put_script(
        &self,
        script: &ScriptRecord,
        expected: Option<&ScriptRecord>,
    ) -> StoreResult<bool> {
        let body = serde_json::to_string(script).map_err(backend)?;
        let v = script.clone();
        let expected = expected.cloned();
        let written = self
            .with(move |c| {
                let tx = c.unchecked_transaction()?;
                let current: Option<String> = tx
                    .query_row("SELECT body FROM scripts WHERE name = ?1", [&v.name], |r| {
                        r.get(0)
                    })
                    .optional()?;
                // An unreadable stored record (`Some(None)`) equals nothing a
                // caller read.
                let current = current.map(|b| serde_json::from_str::<ScriptRecord>(&b).ok());
                if current != expected.map(Some) {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO scripts (name, account_id, tag, body) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT(name) DO UPDATE SET account_id = ?2, tag = ?3, body = ?4",
                    params![v.name, v.account_id, v.tag, body],
                )?;
                tx.execute("DELETE FROM script_services WHERE script = ?1", [&v.name])?;
                for id in &v.services {
                    tx.execute(
                        "INSERT OR IGNORE INTO script_services (script, service_id) VALUES (?1, ?2)",
                        params![v.name, id],
                    )?;
                }
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if written {
            self.publish(Change::Script(script.name.clone())).await;
        }
        Ok(written)
    }

    async fn get_script(&self, name: &str) -> StoreResult<Option<ScriptRecord>> {
        let name = name.to_owned();
        let body: Option<String> = self
            .with(move |c| {
                c.query_row("SELECT body FROM scripts WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await?;
        body.map(|b| serde_json::from_str(&b).map_err(backend))
            .transpose()
    }

    async fn list_scripts(&self) -> StoreResult<Vec<ScriptRecord>> {
        let bodies: Vec<String> = self
            .with(|c| {
                let mut st = c.prepare("SELECT body FROM scripts ORDER BY name")?;
                let rows = st.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(backend))
            .collect()
    }

    async fn delete_script(&self, account_id: &str, name: &str) -> StoreResult<bool> {
        let (account, n) = (account_id.to_owned(), name.to_owned());
        let deleted = self
            .with(move |c| {
                c.execute(
                    "DELETE FROM scripts WHERE name = ?1 AND account_id = ?2",
                    params![n, account],
                )
            })
            .await?
            > 0;
        if deleted {
            self.publish(Change::Script(name.to_owned())).await;
        }
        Ok(deleted)
    }

    async fn scripts_binding(&self, service_id: &str) -> StoreResult<Vec<String>> {
        let id = service_id.to_owned();
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT script FROM script_services WHERE service_id = ?1 ORDER BY script",
            )?;
            let rows = st.query_map([id], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn cluster_ca(&self) -> StoreResult<Option<CaRecord>> {
        self.with(|c| {
            c.query_row(
                "SELECT cert_pem, key_pem FROM cluster_ca WHERE id = 1",
                [],
                |r| {
                    Ok(CaRecord {
                        cert_pem: r.get(0)?,
                        key_pem: r.get(1)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn init_cluster_ca(&self, ca: &CaRecord) -> StoreResult<CaRecord> {
        let ca = ca.clone();
        self.with(move |c| {
            // The insert takes the write lock: a process racing this one
            // either committed first (nothing inserted here) or waits.
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO cluster_ca (id, cert_pem, key_pem) VALUES (1, ?1, ?2) \
                 ON CONFLICT(id) DO NOTHING",
                params![ca.cert_pem, ca.key_pem],
            )?;
            let stored = tx.query_row(
                "SELECT cert_pem, key_pem FROM cluster_ca WHERE id = 1",
                [],
                |r| {
                    Ok(CaRecord {
                        cert_pem: r.get(0)?,
                        key_pem: r.get(1)?,
                    })
                },
            )?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tunnel: &str) -> ConnectionRecord {
        ConnectionRecord {
            id: id.into(),
            tunnel_id: tunnel.into(),
            connector_id: "c".into(),
            client_version: "0.1.0".into(),
            edge_name: "edge".into(),
            origin_ip: "127.0.0.1".into(),
            opened_at: rfc3339(SystemTime::now()),
            conn_index: 0,
            ha_connections: 4,
        }
    }

    #[tokio::test]
    async fn tunnels_persist_across_reopen_with_only_the_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("warren.db");
        let hash = crate::hash_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret");
        let (account, tunnel) = {
            let s = SqliteStore::open(&path).expect("open");
            let a = s.create_account("demo").await.expect("account");
            let t = s
                .create_tunnel(&a.id, "home", hash, None)
                .await
                .expect("tunnel");
            (a, t)
        };
        let s = SqliteStore::open(&path).expect("reopen");
        assert_eq!(
            s.get_tunnel(&tunnel.id).await.expect("get"),
            Some(tunnel.clone())
        );
        assert_eq!(
            s.list_tunnels(&account.id).await.expect("list"),
            vec![tunnel.clone()]
        );
        assert!(s.list_tunnels("other").await.expect("list").is_empty());
        assert!(!s.delete_tunnel("other", &tunnel.id).await.expect("delete"));
        assert!(
            s.delete_tunnel(&account.id, &tunnel.id)
                .await
                .expect("delete")
        );
        assert_eq!(s.get_tunnel(&tunnel.id).await.expect("get"), None);
    }

    #[tokio::test]
    async fn services_are_stored_replaced_and_deleted_within_their_account() {
        use crate::{CertVerificationMode, ServiceHost, ServiceType};
        let s = SqliteStore::open_in_memory().expect("open");
        let a = s.create_account("demo").await.expect("account");
        let mut watch = s.watch();
        let mut svc = VpcService {
            id: "svc-1".into(),
            account_id: a.id.clone(),
            name: "inventory".into(),
            service_type: ServiceType::Http,
            http_port: Some(80),
            https_port: None,
            tcp_port: None,
            host: ServiceHost::Hostname {
                hostname: "inventory.internal".into(),
                tunnel_id: "tun-1".into(),
                resolver_ips: vec!["10.0.0.2".parse().expect("ip")],
            },
            cert_verification_mode: CertVerificationMode::VerifyFull,
            created_at: rfc3339(SystemTime::now()),
            updated_at: rfc3339(SystemTime::now()),
        };
        s.create_service(&svc).await.expect("create");
        assert_eq!(
            watch.recv().await.expect("change"),
            Change::Service("svc-1".into())
        );
        assert_eq!(
            s.get_service("svc-1").await.expect("get"),
            Some(svc.clone())
        );
        assert_eq!(s.services_using_tunnel("tun-1").await.expect("count"), 1);
        svc.host = ServiceHost::Addresses {
            ipv4: Some("10.0.0.9".parse().expect("ip")),
            ipv6: None,
            tunnel_id: "tun-2".into(),
        };
        assert!(s.replace_service(&svc).await.expect("replace"));
        assert_eq!(s.services_using_tunnel("tun-1").await.expect("count"), 0);
        assert_eq!(
            s.list_services(&a.id).await.expect("list"),
            vec![svc.clone()]
        );
        let foreign = VpcService {
            account_id: "other".into(),
            ..svc.clone()
        };
        assert!(!s.replace_service(&foreign).await.expect("replace"));
        assert!(!s.delete_service("other", "svc-1").await.expect("delete"));
        assert!(s.delete_service(&a.id, "svc-1").await.expect("delete"));
        assert_eq!(s.get_service("svc-1").await.expect("get"), None);
    }

    #[tokio::test]
    async fn a_tunnel_needs_an_existing_account() {
        let s = SqliteStore::open_in_memory().expect("open");
        assert!(matches!(
            s.create_tunnel("nope", "x", [0; 32], None).await,
            Err(StoreError::NotFound("account"))
        ));
    }

    #[tokio::test]
    async fn connections_expire_with_their_lease_and_publish_changes() {
        let s = SqliteStore::open_in_memory().expect("open");
        let a = s.create_account("demo").await.expect("account");
        let t = s
            .create_tunnel(&a.id, "home", [1; 32], None)
            .await
            .expect("tunnel");
        let mut watch = s.watch();
        s.put_connection(&record("c1", &t.id), Duration::from_secs(60))
            .await
            .expect("put");
        s.put_connection(&record("c2", &t.id), Duration::from_millis(1))
            .await
            .expect("put");
        assert_eq!(
            watch.recv().await.expect("change"),
            Change::Connections(t.id.clone())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let live: Vec<String> = s
            .list_connections(&t.id)
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(live, vec!["c1".to_string()]);
        let t2 = s.get_tunnel(&t.id).await.expect("get").expect("exists");
        assert!(t2.first_connected_at.is_some());
        s.remove_connection("c1").await.expect("remove");
        assert!(s.list_connections(&t.id).await.expect("list").is_empty());
    }
}
