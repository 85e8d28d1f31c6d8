//! The state file: which engines this router runs, so that the next router (after a
//! graceful upgrade or a restart) adopts them instead of starting second copies, which
//! would not fit in GPU memory.
//!
//! An entry is adopted only if its pid is alive, was started at the recorded time (pids
//! are reused), still shows the command line recorded when it became ready (wrappers
//! that `exec` and `#!` scripts change what `/proc` shows, so the observed one is kept),
//! and was started from the same configured command; the caller also requires `/health`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRecord {
    pub pid: i32,
    /// Process group (= pid: engines run in their own session).
    pub pgid: i32,
    /// The command the router started (from the config).
    pub argv: Vec<String>,
    /// What `/proc/<pid>/cmdline` showed once the engine was ready (empty before).
    pub cmdline: Vec<String>,
    /// `/proc/<pid>/stat` start time (clock ticks since boot).
    pub start_time: u64,
    /// The router that runs it (pid and start time): an engine whose instance left the
    /// config is stopped only once that router has drained and exited.
    #[serde(default)]
    pub router: Option<Owner>,
    /// False while the engine is still loading: recorded from the spawn on, so that a
    /// router taking over during a start adopts (or stops) it instead of starting a
    /// second copy next to it.
    #[serde(default = "ready_by_default")]
    pub ready: bool,
}

impl EngineRecord {
    /// This router's record of the engine `pid` started from `argv`, read from `/proc`
    /// (`None` if it is gone). The command line is taken only once `ready`: a wrapper may
    /// still `exec` the real engine while it loads.
    pub fn observe(pid: i32, argv: &[String], ready: bool) -> Option<EngineRecord> {
        let cmdline = if ready { cmdline(pid)? } else { Vec::new() };
        Some(EngineRecord {
            pid,
            pgid: pid,
            argv: argv.to_vec(),
            cmdline,
            start_time: start_time(pid)?,
            router: Owner::me(),
            ready,
        })
    }
}

/// Files written before `ready` existed held ready engines only.
fn ready_by_default() -> bool {
    true
}

/// A process identity that survives pid reuse: pid and `/proc` start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: i32,
    pub start_time: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> Option<Owner> {
        let pid = std::process::id() as i32;
        start_time(pid).map(|start_time| Owner { pid, start_time })
    }

    pub fn is_live(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// `<run_dir>/engines.json`, keyed by instance id.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(run_dir: &Path) -> Self {
        StateFile {
            path: run_dir.join("engines.json"),
        }
    }

    pub fn load(&self) -> BTreeMap<String, EngineRecord> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(path = %self.path.display(), error = %e, "unreadable engine state file ignored");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Undoes what this process wrote since the file read `initial`, for a start that is
    /// abandoned: its own entries go back to what they were (or away, for engines it
    /// started), and entries it dropped come back while their engine lives. Entries of
    /// other routers are left as they are.
    pub fn restore(&self, initial: &BTreeMap<String, EngineRecord>) {
        let me = Owner::me();
        let found = self.load();
        let mut now = found.clone();
        now.retain(|_, rec| rec.router != me || me.is_none());
        for (id, rec) in initial {
            if !now.contains_key(id) && is_live(rec) {
                now.insert(id.clone(), rec.clone());
            }
        }
        if now != found {
            if now.is_empty() && initial.is_empty() {
                let _ = std::fs::remove_file(&self.path);
            } else {
                self.save(&now);
            }
        }
    }

    /// Writes atomically (temp file + rename), so a crash never leaves half a file.
    pub fn save(&self, records: &BTreeMap<String, EngineRecord>) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(records).unwrap_or_default())?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            warn!(path = %self.path.display(), error = %e, "cannot write engine state file");
        }
    }
}

/// Start time of `pid` from `/proc` (field 22 of `stat`); `None` if it is gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // `rest` starts at field 3 (state); start time is field 22.
    fields.get(19)?.parse().ok()
}

/// The argv of a live process.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Whether `rec` still describes a live process (same start time).
pub fn is_live(rec: &EngineRecord) -> bool {
    start_time(rec.pid) == Some(rec.start_time)
}

/// Whether the previous router's engine `rec` can serve as the engine started by `argv`.
/// The command line is compared once recorded (at readiness: a wrapper may still `exec`
/// while the engine loads); pid plus start time identify the process before that.
pub fn matches(rec: &EngineRecord, argv: &[String]) -> bool {
    rec.argv == argv
        && is_live(rec)
        && (!rec.ready || cmdline(rec.pid).as_deref() == Some(rec.cmdline.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn own_process_is_live_and_round_trips() {
        let me = std::process::id() as i32;
        let rec = EngineRecord::observe(me, &v(&["x"]), true).unwrap();
        assert_eq!(rec.cmdline, cmdline(me).unwrap());
        assert!(is_live(&rec));
        assert!(rec.router.unwrap().is_live());
        assert!(!Owner {
            start_time: rec.start_time + 1,
            ..rec.router.unwrap()
        }
        .is_live());
        assert!(matches(&rec, &v(&["x"])));
        assert!(!matches(&rec, &v(&["y"])), "another configured command");
        assert!(!matches(
            &EngineRecord {
                cmdline: v(&["z"]),
                ..rec.clone()
            },
            &v(&["x"])
        ));
        assert!(!is_live(&EngineRecord {
            start_time: rec.start_time + 1,
            ..rec.clone()
        }));
        // Still loading: no command line recorded yet, identified by pid + start time.
        let loading = EngineRecord {
            cmdline: Vec::new(),
            ready: false,
            ..rec.clone()
        };
        assert!(matches(&loading, &v(&["x"])));
        assert!(!matches(&loading, &v(&["y"])));
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert!(f.load().is_empty());
        let mut m = BTreeMap::new();
        m.insert("e1".to_string(), rec.clone());
        f.save(&m);
        assert_eq!(f.load()["e1"], rec);
    }

    #[test]
    fn files_written_before_owners_were_recorded_still_load() {
        let old = r#"{"e1":{"pid":5,"pgid":5,"argv":["a"],"cmdline":["a"],"start_time":7}}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("engines.json"), old).unwrap();
        let m = StateFile::new(dir.path()).load();
        assert_eq!(m["e1"].pid, 5);
        assert_eq!(m["e1"].router, None);
        assert!(m["e1"].ready);
    }

    #[test]
    fn restore_undoes_only_what_this_process_wrote() {
        let me = std::process::id() as i32;
        let mine = EngineRecord::observe(me, &v(&["x"]), true).unwrap();
        // Engines the previous router runs (this live process stands in for them).
        let old_router = Owner {
            pid: nix::unistd::getppid().as_raw(),
            start_time: start_time(nix::unistd::getppid().as_raw()).unwrap(),
        };
        let theirs = EngineRecord {
            router: Some(old_router),
            ..mine.clone()
        };
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        let initial = BTreeMap::from([
            ("adopted".to_string(), theirs.clone()),
            ("untouched".to_string(), theirs.clone()),
            ("dropped".to_string(), theirs.clone()),
        ]);
        // This process adopted one, started one, dropped one; another router changed one.
        let changed = EngineRecord {
            argv: v(&["changed-by-the-old-router"]),
            ..theirs.clone()
        };
        f.save(&BTreeMap::from([
            ("adopted".to_string(), mine.clone()),
            ("spawned".to_string(), mine.clone()),
            ("untouched".to_string(), changed.clone()),
        ]));
        f.restore(&initial);
        let now = f.load();
        assert_eq!(now.len(), 3, "{now:?}");
        assert_eq!(now["adopted"], theirs);
        assert_eq!(now["dropped"], theirs);
        assert_eq!(now["untouched"], changed);
        assert!(!now.contains_key("spawned"));

        // Nothing there before: nothing there after.
        f.save(&BTreeMap::from([("spawned".to_string(), mine)]));
        f.restore(&BTreeMap::new());
        assert!(!dir.path().join("engines.json").exists());
    }
}
