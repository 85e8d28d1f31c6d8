//! The usage ledger: requests, prompt and completion tokens and denials per principal ×
//! model × UTC day, in an embedded SQLite database (`auth.usage_db`).
//!
//! The request path only adds to an in-memory table; [`LedgerFlush`] writes it in one
//! transaction every second, off the async workers. Once the process is leaving (stop or
//! graceful upgrade) every record is written at once, so the requests that finish during
//! the drain are kept. At start the day's totals are read back (`tokens_per_day`
//! survives restarts and upgrades). Two processes may share the file during an upgrade:
//! SQLite's locking serialises their writes and additions commute.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rusqlite::{params, Connection};
use serde::Serialize;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    principal TEXT NOT NULL,
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (principal, model, day)
);
CREATE TABLE IF NOT EXISTS denials (
    principal TEXT NOT NULL,
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (principal, model, day, reason)
);
";

/// Counts of one principal × model × day not yet written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    requests: u64,
    prompt: u64,
    completion: u64,
}

type Key = (String, String, String);

/// Day → principal → model → counts: a record of a known principal and model on the
/// current day allocates nothing.
type UsageMap = HashMap<String, HashMap<String, HashMap<String, Counts>>>;

#[derive(Default)]
struct Pending {
    usage: UsageMap,
    denials: HashMap<(Key, &'static str), u64>,
    /// Days since 1970 and `YYYY-MM-DD` of the last record (formatted once a day).
    day: (i64, String),
}

/// Adds `c` for (day, principal, model), allocating keys only when new.
fn add(usage: &mut UsageMap, day: &str, principal: &str, model: &str, c: Counts) {
    let by_principal = match usage.get_mut(day) {
        Some(m) => m,
        None => usage.entry(day.to_string()).or_default(),
    };
    let by_model = match by_principal.get_mut(principal) {
        Some(m) => m,
        None => by_principal.entry(principal.to_string()).or_default(),
    };
    let e = match by_model.get_mut(model) {
        Some(e) => e,
        None => by_model.entry(model.to_string()).or_default(),
    };
    e.requests += c.requests;
    e.prompt += c.prompt;
    e.completion += c.completion;
}

impl Pending {
    /// Today's `YYYY-MM-DD`, formatted again only when the day changes.
    fn today(&mut self) -> &str {
        let n = chrono::Utc::now().timestamp().div_euclid(86_400);
        if n != self.day.0 || self.day.1.is_empty() {
            self.day = (n, today());
        }
        &self.day.1
    }

    fn add_today(&mut self, principal: &str, model: &str, c: Counts) {
        self.today();
        add(&mut self.usage, &self.day.1, principal, model, c);
    }

    /// Every (day, principal, model, counts).
    fn usage_rows(&self) -> impl Iterator<Item = (&str, &str, &str, &Counts)> {
        self.usage.iter().flat_map(|(d, ps)| {
            ps.iter().flat_map(move |(p, ms)| {
                ms.iter()
                    .map(move |(m, c)| (d.as_str(), p.as_str(), m.as_str(), c))
            })
        })
    }
}

/// One row of `GET /v1/router/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub principal: String,
    pub model: String,
    pub day: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Refusals by reason (`rpm`, `tpd`, `model_denied`, ...).
    pub denied: HashMap<String, u64>,
}

/// Which rows a query wants (each bound optional, days inclusive).
#[derive(Debug, Default, Clone)]
pub struct UsageQuery {
    pub principal: Option<String>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

impl UsageQuery {
    /// From a URL query string (`principal=&from=YYYY-MM-DD&to=YYYY-MM-DD`). Errors
    /// name the parameter.
    pub fn parse(query: &str) -> Result<UsageQuery, (&'static str, String)> {
        let mut q = UsageQuery::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let date = |name: &'static str| {
                NaiveDate::parse_from_str(&v, "%Y-%m-%d").map_err(|_| {
                    (
                        name,
                        format!("`{name}` must be a date YYYY-MM-DD, got `{v}`"),
                    )
                })
            };
            match k.as_ref() {
                "principal" => q.principal = Some(v.to_string()),
                "from" => q.from = Some(date("from")?),
                "to" => q.to = Some(date("to")?),
                other => {
                    return Err((
                        "query",
                        format!("unknown parameter `{other}` (principal, from, to)"),
                    ))
                }
            }
        }
        Ok(q)
    }
}

/// The ledger of one router process.
pub struct Ledger {
    conn: Mutex<Connection>,
    pending: Mutex<Pending>,
    /// The process is leaving: records are written as they come.
    write_through: AtomicBool,
    path: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Today (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string()
}

impl Ledger {
    /// Opens (creating it and its directory if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Arc<Ledger>, String> {
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(&e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        // WAL: the other process of an upgrade reads while this one writes.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| fail(&e))?;
        conn.execute_batch(SCHEMA).map_err(|e| fail(&e))?;
        Ok(Arc::new(Ledger {
            conn: Mutex::new(conn),
            pending: Mutex::default(),
            write_through: AtomicBool::new(false),
            path: path.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One finished request of `principal` on `model` and the tokens it was charged.
    pub fn record(&self, principal: &str, model: &str, prompt: u64, completion: u64) {
        {
            let mut p = lock(&self.pending);
            let c = Counts {
                requests: 1,
                prompt,
                completion,
            };
            p.add_today(principal, model, c);
        }
        self.written_through();
    }

    /// One refusal of a request of `principal` (`model`: `-` when none was named).
    pub fn deny(&self, principal: &str, model: &str, reason: &'static str) {
        {
            let mut p = lock(&self.pending);
            let key = (
                principal.to_string(),
                model.to_string(),
                p.today().to_string(),
            );
            *p.denials.entry((key, reason)).or_default() += 1;
        }
        self.written_through();
    }

    fn written_through(&self) {
        if self.write_through.load(Ordering::Relaxed) {
            if let Err(e) = self.flush() {
                tracing::error!(db = %self.path.display(), error = %e, "usage ledger not written");
            }
        }
    }

    /// Writes what was recorded since the last flush, in one transaction. On an error
    /// the records stay pending (the next flush tries again).
    pub fn flush(&self) -> Result<(), String> {
        let taken = std::mem::take(&mut *lock(&self.pending));
        if taken.usage.is_empty() && taken.denials.is_empty() {
            return Ok(());
        }
        let written = self.write(&taken);
        if written.is_err() {
            let mut p = lock(&self.pending);
            for (day, principal, model, c) in taken.usage_rows() {
                add(&mut p.usage, day, principal, model, *c);
            }
            for (k, n) in taken.denials {
                *p.denials.entry(k).or_default() += n;
            }
        }
        written
    }

    fn write(&self, p: &Pending) -> Result<(), String> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut add = tx
                .prepare_cached(
                    "INSERT INTO usage (principal, model, day, requests, prompt_tokens, completion_tokens)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (principal, model, day) DO UPDATE SET
                       requests = requests + excluded.requests,
                       prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                       completion_tokens = completion_tokens + excluded.completion_tokens",
                )
                .map_err(|e| e.to_string())?;
            for (day, principal, model, c) in p.usage_rows() {
                add.execute(params![
                    principal,
                    model,
                    day,
                    c.requests as i64,
                    c.prompt as i64,
                    c.completion as i64
                ])
                .map_err(|e| e.to_string())?;
            }
            let mut deny = tx
                .prepare_cached(
                    "INSERT INTO denials (principal, model, day, reason, count) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (principal, model, day, reason) DO UPDATE SET count = count + excluded.count",
                )
                .map_err(|e| e.to_string())?;
            for (((principal, model, day), reason), n) in &p.denials {
                deny.execute(params![principal, model, day, reason, *n as i64])
                    .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    /// Rows matching `q` (pending records written first), by day, principal, model.
    pub fn query(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, String> {
        self.flush()?;
        let conn = lock(&self.conn);
        let bounds = Bounds {
            principal: q.principal.clone(),
            from: q.from.map(|d| d.format("%Y-%m-%d").to_string()),
            to: q.to.map(|d| d.format("%Y-%m-%d").to_string()),
        };
        let mut rows = usage_rows(&conn, &bounds).map_err(|e| e.to_string())?;
        let mut index: HashMap<Key, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.principal.clone(), r.model.clone(), r.day.clone()), i))
            .collect();
        for (key, reason, n) in denial_rows(&conn, &bounds).map_err(|e| e.to_string())? {
            let i = *index.entry(key.clone()).or_insert_with(|| {
                rows.push(UsageRow {
                    principal: key.0,
                    model: key.1,
                    day: key.2,
                    requests: 0,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    denied: HashMap::new(),
                });
                rows.len() - 1
            });
            rows[i].denied.insert(reason, n);
        }
        rows.sort_by(|a, b| {
            (&a.day, &a.principal, &a.model).cmp(&(&b.day, &b.principal, &b.model))
        });
        Ok(rows)
    }

    /// Tokens charged today per principal × model (what the limiter starts from).
    pub fn used_today(&self) -> Result<Vec<(String, String, u64)>, String> {
        let q = UsageQuery {
            from: Some(chrono::Utc::now().date_naive()),
            ..UsageQuery::default()
        };
        Ok(self
            .query(&q)?
            .into_iter()
            .map(|r| (r.principal, r.model, r.prompt_tokens + r.completion_tokens))
            .collect())
    }
}

/// The bounds of a query, as SQL parameters (`NULL`: unbounded).
struct Bounds {
    principal: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

const FILTER: &str =
    "(?1 IS NULL OR principal = ?1) AND (?2 IS NULL OR day >= ?2) AND (?3 IS NULL OR day <= ?3)";

/// SQLite integers are signed; counts are never negative.
fn count(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(r.get::<_, i64>(i)?.max(0) as u64)
}

fn usage_rows(conn: &Connection, b: &Bounds) -> rusqlite::Result<Vec<UsageRow>> {
    let sql = format!(
        "SELECT principal, model, day, requests, prompt_tokens, completion_tokens FROM usage WHERE {FILTER}"
    );
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(params![b.principal, b.from, b.to], |r| {
        Ok(UsageRow {
            principal: r.get(0)?,
            model: r.get(1)?,
            day: r.get(2)?,
            requests: count(r, 3)?,
            prompt_tokens: count(r, 4)?,
            completion_tokens: count(r, 5)?,
            denied: HashMap::new(),
        })
    })?;
    rows.collect()
}

fn denial_rows(conn: &Connection, b: &Bounds) -> rusqlite::Result<Vec<(Key, String, u64)>> {
    let sql = format!("SELECT principal, model, day, reason, count FROM denials WHERE {FILTER}");
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(params![b.principal, b.from, b.to], |r| {
        Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?, count(r, 4)?))
    })?;
    rows.collect()
}

/// Writes the ledger every second; from shutdown on, every record at once.
pub struct LedgerFlush(pub Arc<Ledger>);

impl LedgerFlush {
    async fn flush(&self) {
        let l = self.0.clone();
        let r = tokio::task::spawn_blocking(move || l.flush()).await;
        if let Ok(Err(e)) = r {
            tracing::error!(db = %self.0.path.display(), error = %e, "usage ledger not written; retrying");
        }
    }
}

#[async_trait]
impl BackgroundService for LedgerFlush {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                _ = shutdown.changed() => break,
            }
        }
        // Leaving: what finishes during the drain is written as it comes.
        self.0.write_through.store(true, Ordering::Relaxed);
        self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_add_up_across_flushes_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/usage.sqlite");
        let l = Ledger::open(&path).unwrap();
        l.record("a", "m", 10, 5);
        l.record("a", "m", 1, 2);
        l.flush().unwrap();
        l.record("a", "m", 100, 0);
        l.record("b", "other", 7, 7);
        l.deny("a", "m", "rpm");
        l.deny("a", "m", "rpm");
        l.deny("c", "-", "tpd");
        let rows = l.query(&UsageQuery::default()).unwrap();
        let a = rows.iter().find(|r| r.principal == "a").unwrap();
        assert_eq!(
            (a.requests, a.prompt_tokens, a.completion_tokens),
            (3, 111, 7)
        );
        assert_eq!(a.denied["rpm"], 2);
        let c = rows.iter().find(|r| r.principal == "c").unwrap();
        assert_eq!((c.requests, c.denied["tpd"]), (0, 1));
        drop(l);
        // Another process (a restart) sees the same totals and adds to them.
        let again = Ledger::open(&path).unwrap();
        let mut today = again.used_today().unwrap();
        today.sort();
        assert_eq!(
            today,
            vec![
                ("a".to_string(), "m".to_string(), 118),
                ("b".to_string(), "other".to_string(), 14),
                ("c".to_string(), "-".to_string(), 0),
            ]
        );
    }

    #[test]
    fn queries_filter_by_principal_and_days() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("u.sqlite")).unwrap();
        {
            let conn = lock(&l.conn);
            for (p, day) in [
                ("a", "2026-11-30"),
                ("a", "2026-12-01"),
                ("b", "2026-12-01"),
                ("a", "2026-12-02"),
            ] {
                conn.execute(
                    "INSERT INTO usage VALUES (?1, 'm', ?2, 1, 1, 1)",
                    params![p, day],
                )
                .unwrap();
            }
        }
        let q = UsageQuery::parse("principal=a&from=2026-12-01&to=2026-12-02").unwrap();
        let days: Vec<String> = l.query(&q).unwrap().into_iter().map(|r| r.day).collect();
        assert_eq!(days, ["2026-12-01", "2026-12-02"]);
        let all = l.query(&UsageQuery::parse("").unwrap()).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(UsageQuery::parse("from=12/01/2026").unwrap_err().0, "from");
        assert_eq!(UsageQuery::parse("user=x").unwrap_err().0, "query");
        let spaced = UsageQuery::parse("principal=vision%20batch").unwrap();
        assert_eq!(spaced.principal.as_deref(), Some("vision batch"));
    }
}
