//! One access-log line per request, as logfmt or JSON (`router.access_log`), on stdout
//! (the logs proper go to stderr) or appended to `router.access_log_file`.
//!
//! Lines leave the request path through a bounded queue to one writer thread, so that a
//! worker thread never waits for a slow disk or a stalled pipe; when the queue is full a
//! line is dropped and counted (`llm_router_access_log_dropped_total`). The file is
//! reopened after a SIGHUP ([`reopen`]), which is what logrotate sends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use crate::config::AccessLogFormat;

/// What is known about a request when it ends.
#[derive(Debug, Default, Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client: String,
    pub method: &'a str,
    pub path: &'a str,
    pub model: Option<&'a str>,
    pub instance: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Who asked (auth on) and the admission class of the request.
    pub principal: Option<&'a str>,
    pub class: Option<&'a str>,
    /// Time spent in the model's admission queue, when it waited.
    pub queued_ms: Option<f64>,
    /// Tokens reserved at admission, and whether the charge was estimated (the engine
    /// reported no usage).
    pub reserved_tokens: Option<u64>,
    pub usage_estimated: Option<bool>,
    /// `instance: reason` of each abandoned attempt.
    pub failovers: &'a [String],
    /// The route receipt: why the instance was chosen (`policy=...; chosen=...;
    /// candidates=id:score:tier,...`).
    pub route: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// RFC 3339 UTC with milliseconds, without a date crate.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn logfmt_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=')
    {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

impl AccessRecord<'_> {
    pub fn line(&self, format: AccessLogFormat) -> Option<String> {
        match format {
            AccessLogFormat::Off => None,
            AccessLogFormat::Json => serde_json::to_string(self).ok(),
            AccessLogFormat::Logfmt => {
                let mut s = format!(
                    "time={} request_id={} client={} method={} path={} status={} duration_ms={:.3}",
                    self.time,
                    logfmt_value(self.request_id),
                    logfmt_value(&self.client),
                    self.method,
                    logfmt_value(self.path),
                    self.status,
                    self.duration_ms
                );
                let mut add = |k: &str, v: Option<String>| {
                    if let Some(v) = v {
                        s.push_str(&format!(" {k}={v}"));
                    }
                };
                let ms = |t: Option<f64>| t.map(|t| format!("{t:.3}"));
                add("model", self.model.map(logfmt_value));
                add("instance", self.instance.map(logfmt_value));
                add("ttfb_ms", ms(self.ttfb_ms));
                add("prompt_tokens", self.prompt_tokens.map(|t| t.to_string()));
                add(
                    "completion_tokens",
                    self.completion_tokens.map(|t| t.to_string()),
                );
                add("principal", self.principal.map(logfmt_value));
                add("class", self.class.map(str::to_string));
                add("queued_ms", ms(self.queued_ms));
                add(
                    "reserved_tokens",
                    self.reserved_tokens.map(|t| t.to_string()),
                );
                add(
                    "usage_estimated",
                    self.usage_estimated.map(|e| e.to_string()),
                );
                let failovers = (!self.failovers.is_empty()).then(|| self.failovers.join("; "));
                add("failovers", failovers.as_deref().map(logfmt_value));
                add("route", self.route.map(logfmt_value));
                add("error", self.error.map(logfmt_value));
                Some(s)
            }
        }
    }
}

/// Lines waiting for the writer thread at most.
const QUEUE_LINES: usize = 8192;

/// Bumped by [`reopen`]; the writer reopens its file when it changed.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Makes the writer reopen the access log file before its next line (SIGHUP).
pub fn reopen() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The access log of one process: its format, where it goes, and the queue to the writer
/// thread (started on first use, i.e. after a daemon has forked).
pub struct AccessLog {
    format: AccessLogFormat,
    file: Option<PathBuf>,
    queue: OnceLock<SyncSender<String>>,
}

impl AccessLog {
    pub fn new(format: AccessLogFormat, file: Option<PathBuf>) -> Self {
        AccessLog {
            format,
            file,
            queue: OnceLock::new(),
        }
    }

    /// Checks that the file can be opened for appending (at start-up, before any fork).
    pub fn check(&self) -> Result<(), String> {
        match &self.file {
            Some(p) if self.format != AccessLogFormat::Off => open(p)
                .map(drop)
                .map_err(|e| format!("router.access_log_file {}: {e}", p.display())),
            _ => Ok(()),
        }
    }

    /// Whether lines are written at all (else a request builds no record).
    pub fn enabled(&self) -> bool {
        self.format != AccessLogFormat::Off
    }

    /// Queues the record's line; never blocks.
    pub fn write(&self, rec: &AccessRecord<'_>) {
        let Some(line) = rec.line(self.format) else {
            return;
        };
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE_LINES);
            let file = self.file.clone();
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || writer(rx, file));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the access log writer");
            }
            tx
        });
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(line) {
            super::metrics::ACCESS_LOG_DROPPED.inc();
        }
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The writer thread: appends lines, flushes whenever the queue is empty, reopens the
/// file after [`reopen`] (keeping the old handle if the new open fails).
fn writer(rx: Receiver<String>, file: Option<PathBuf>) {
    let sink = |p: &Option<PathBuf>| -> std::io::Result<Box<dyn Write>> {
        Ok(match p {
            Some(p) => Box::new(std::io::BufWriter::new(open(p)?)),
            None => Box::new(std::io::BufWriter::new(std::io::stdout())),
        })
    };
    let mut generation = GENERATION.load(Ordering::SeqCst);
    let mut out = match sink(&file) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the access log; lines are dropped");
            Box::new(std::io::sink())
        }
    };
    while let Ok(first) = rx.recv() {
        let now = GENERATION.load(Ordering::SeqCst);
        if now != generation {
            generation = now;
            let _ = out.flush();
            match sink(&file) {
                Ok(o) => out = o,
                Err(e) => {
                    tracing::error!(error = %e, "cannot reopen the access log; still writing to the old file")
                }
            }
        }
        let _ = writeln!(out, "{first}");
        while let Ok(line) = rx.try_recv() {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_the_file_and_a_reopen_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::new(AccessLogFormat::Logfmt, Some(path.clone()));
        log.check().unwrap();
        let rec = |id| AccessRecord {
            request_id: id,
            ..Default::default()
        };
        let wait_for = |p: &Path, what: &str| {
            let t0 = std::time::Instant::now();
            while !std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains(what)
            {
                assert!(t0.elapsed().as_secs() < 10, "{what} not in {}", p.display());
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        log.write(&rec("first"));
        wait_for(&path, "request_id=first");
        // logrotate: move the file away, then SIGHUP.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        reopen();
        log.write(&rec("second"));
        wait_for(&path, "request_id=second");
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert!(old.contains("first") && !old.contains("second"), "{old}");
        let bad = AccessLog::new(
            AccessLogFormat::Json,
            Some(dir.path().join("no/such/dir.log")),
        );
        assert!(bad.check().unwrap_err().contains("access_log_file"));
    }

    #[test]
    fn logfmt_and_json_lines() {
        let f = vec!["a: connect refused".to_string()];
        let r = AccessRecord {
            time: "2026-01-01T00:00:00.000Z".into(),
            request_id: "abc",
            client: "127.0.0.1:5".into(),
            method: "POST",
            path: "/v1/chat/completions",
            model: Some("m"),
            instance: Some("i1"),
            status: 200,
            duration_ms: 1.5,
            ttfb_ms: Some(0.5),
            prompt_tokens: Some(3),
            completion_tokens: Some(7),
            principal: Some("team-a"),
            class: Some("critical"),
            queued_ms: Some(12.5),
            reserved_tokens: Some(40),
            usage_estimated: Some(false),
            failovers: &f,
            route: Some("policy=least_load; chosen=i1; candidates=i1:0.0:fresh"),
            error: None,
        };
        let l = r.line(AccessLogFormat::Logfmt).unwrap();
        assert!(
            l.contains("request_id=abc")
                && l.contains("status=200")
                && l.contains("completion_tokens=7"),
            "{l}"
        );
        assert!(l.contains("failovers=\"a: connect refused\""), "{l}");
        assert!(
            l.contains("route=\"policy=least_load; chosen=i1; candidates=i1:0.0:fresh\""),
            "{l}"
        );
        assert!(
            l.contains("principal=team-a")
                && l.contains("class=critical")
                && l.contains("queued_ms=12.500")
                && l.contains("reserved_tokens=40")
                && l.contains("usage_estimated=false"),
            "{l}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&r.line(AccessLogFormat::Json).unwrap()).unwrap();
        assert_eq!(j["instance"], "i1");
        assert_eq!(j["principal"], "team-a");
        assert_eq!(j["reserved_tokens"], 40);
        assert!(r.line(AccessLogFormat::Off).is_none());
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
