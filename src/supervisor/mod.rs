//! The engine supervisor: a Pingora background service that starts every managed
//! engine, gates its traffic on `GET /health` (the poller's verdicts, see
//! `balance::health`), restarts it with backoff when it dies or stops answering, and stops
//! it with the router. One engine's trouble never touches
//! another's: each has its own task, process group and log.

pub mod command;
pub mod process;
pub mod state;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::process::Child;
use tokio::sync::{broadcast, mpsc};
use tracing::{error, info, warn};

use crate::balance::stats::{now_ms, Process};
use crate::balance::{Instance, Registry};
use crate::config::{Config, ModelKind, SupervisorOptions};
use crate::lifecycle;
use command::{engine_spec, EngineSpec};
use state::{EngineRecord, Owner, StateFile};

const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait for a fresh `/health` verdict of the poller (its check times out
/// after `balancer.scrape_timeout_s`).
const VERDICT_WAIT: Duration = Duration::from_secs(5);
/// An engine that served this long before dying starts over at the shortest backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

struct Engine {
    spec: EngineSpec,
    inst: Arc<Instance>,
}

pub struct Supervisor {
    engines: Vec<Engine>,
    opts: SupervisorOptions,
    /// Engines on a shared GPU start one after another (vLLM profiles memory assuming it
    /// is alone); one lock per GPU, taken in ascending order.
    gpu_locks: BTreeMap<u32, Arc<tokio::sync::Mutex<()>>>,
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    state: StateFile,
    /// Engines this router runs (mirrored to the state file).
    records: Arc<Mutex<BTreeMap<String, EngineRecord>>>,
    /// What the previous router left running, for adoption.
    previous: Mutex<BTreeMap<String, EngineRecord>>,
    /// Live engines of instances no longer configured: stopped once their router is gone.
    retiring: Vec<(String, EngineRecord)>,
    /// Routers that ran engines before this one (from the state file), other than this one.
    previous_owners: Vec<Owner>,
    /// Set when a graceful upgrade begins: from then on the engines and the state file
    /// belong to the new router (no restart, no stop, no write from this one).
    upgrading: Arc<AtomicBool>,
    /// The state file as this router found it, put back if its start is abandoned.
    initial: BTreeMap<String, EngineRecord>,
    /// Set when an abandoned start is being undone: no more writes to the state file.
    frozen: Arc<AtomicBool>,
    /// Set once this process runs the supervisor (the daemon, not its foreground parent).
    running: Arc<AtomicBool>,
}

/// The engine process being watched: our child, or one adopted from a previous router.
enum Proc<'a> {
    Child(&'a mut Child),
    Adopted(EngineRecord),
}

impl Proc<'_> {
    /// Resolves when the process has exited, with how.
    async fn exited(&mut self) -> String {
        match self {
            Proc::Child(c) => describe(c.wait().await),
            Proc::Adopted(rec) => {
                while state::is_live(rec) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                "adopted process exited (status unknown: not our child)".to_string()
            }
        }
    }
}

/// The previous router's engine for an instance, as found at start-up.
enum Previous {
    None,
    /// Alive, same command, healthy (or still loading): taken over.
    Adopt(EngineRecord),
    /// Alive but unusable (the reason says why): stopped once this router is in charge,
    /// then replaced.
    Replace(EngineRecord, &'static str),
}

/// One life of an engine process, from start (or adoption) to its end.
struct Life {
    end: End,
    /// 0: the process never started.
    pgid: i32,
    child: Option<Child>,
    /// Taken over from another router rather than started by this one.
    adopted: bool,
}

/// What a start attempt came to.
enum Spawned {
    Life(Life),
    /// Another live router started it meanwhile: adopt that one instead.
    Claimed(EngineRecord),
    /// The router is leaving.
    Leave,
}

/// Stopping (not upgrading): requests still streaming from the engine finish first
/// (Pingora's grace period bounds the wait).
async fn wait_for_requests(spec: &EngineSpec) {
    let n = crate::lifecycle::drain::active_requests();
    if n > 0 {
        info!(instance = %spec.instance, in_flight = n, "engine stops once the requests in flight have finished");
    }
    while crate::lifecycle::drain::active_requests() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How an engine's life ended.
enum End {
    /// Died or was declared dead: restart it.
    Crashed(String),
    /// The router is leaving.
    Shutdown,
}

impl Supervisor {
    /// Every managed LLM instance of `config`, bound to its live entry in `registry`.
    /// `phases` tells a graceful upgrade (engines kept) from a stop (engines stopped).
    pub fn new(
        config: &Config,
        registry: &Registry,
        phases: broadcast::Receiver<ExecutionPhase>,
    ) -> Self {
        let mut engines = Vec::new();
        let mut gpu_locks = BTreeMap::new();
        for m in config.models.iter().filter(|m| m.kind == ModelKind::Llm) {
            let Some(model) = registry.get(&m.name) else {
                continue;
            };
            for (ic, inst) in m.instances.iter().zip(&model.instances) {
                if !ic.managed {
                    continue;
                }
                let spec = engine_spec(m, ic, &config.supervisor);
                for g in &spec.gpus {
                    gpu_locks
                        .entry(*g)
                        .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())));
                }
                // No traffic until its /health answers.
                inst.stats().set_process(Process::Starting);
                engines.push(Engine {
                    spec,
                    inst: inst.clone(),
                });
            }
        }
        let state = StateFile::new(&config.supervisor.run_dir);
        let initial = state.load();
        let mut previous = initial.clone();
        // Entries of processes that are gone are stale: drop them.
        previous.retain(|_, rec| state::is_live(rec));
        let mut previous_owners: Vec<Owner> = previous
            .values()
            .filter_map(|r| r.router)
            .filter(|o| Some(*o) != Owner::me())
            .collect();
        previous_owners.sort_by_key(|o| (o.pid, o.start_time));
        previous_owners.dedup();
        let (kept, retiring): (BTreeMap<_, _>, BTreeMap<_, _>) = previous
            .into_iter()
            .partition(|(id, _)| engines.iter().any(|e| &e.spec.instance == id));
        let previous = kept;
        let retiring: Vec<_> = retiring.into_iter().collect();
        let sup = Supervisor {
            engines,
            opts: config.supervisor.clone(),
            gpu_locks,
            phases: Mutex::new(Some(phases)),
            state,
            records: Arc::new(Mutex::new(BTreeMap::new())),
            previous: Mutex::new(previous),
            retiring,
            previous_owners,
            upgrading: Arc::new(AtomicBool::new(false)),
            initial,
            frozen: Arc::new(AtomicBool::new(false)),
            running: Arc::new(AtomicBool::new(false)),
        };
        sup.undo_at_exit();
        sup
    }

    /// Stops the engine of an instance that left the config, once the router that ran it
    /// (the old process of a graceful upgrade, still draining requests to it) has exited.
    /// Until then it stays in the state file, so that a router started meanwhile finishes
    /// the job.
    async fn retire(&self, id: &str, rec: EngineRecord) {
        // Not while this router's start may still be abandoned.
        lifecycle::committed().await;
        self.remember(id, Some(rec.clone()));
        if let Some(owner) = rec.router.filter(|o| Some(*o) != Owner::me()) {
            if owner.is_live() {
                info!(instance = %id, pid = rec.pid, router_pid = owner.pid,
                    "instance removed from the config: its engine stops once the old router has drained");
            }
            while owner.is_live() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        if state::is_live(&rec) {
            process::stop_group(rec.pgid, None, self.opts.stop_timeout).await;
            info!(instance = %id, pid = rec.pid, "engine of a removed instance stopped");
        }
        self.remember(id, None);
    }

    pub fn engine_count(&self) -> usize {
        self.engines.len()
    }

    fn remember(&self, id: &str, rec: Option<EngineRecord>) {
        if let Ok(mut r) = self.records.lock() {
            // Checked under the lock: an exit that undoes the start takes it too.
            if self.upgrading.load(Ordering::SeqCst) || self.frozen.load(Ordering::SeqCst) {
                return;
            }
            match rec {
                Some(rec) => r.insert(id.to_string(), rec),
                None => r.remove(id),
            };
            self.state.save(&r);
        }
    }

    /// What to do with the previous router's engine for this instance: adopt it if it is
    /// alive, was started from the same command and answers `/health` (or is still
    /// loading); replace it if it is alive but does not qualify.
    async fn previous_engine(&self, e: &Engine) -> Previous {
        let taken = self
            .previous
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&e.spec.instance));
        let Some(rec) = taken else {
            return Previous::None;
        };
        if !state::matches(&rec, &e.spec.argv) {
            return Previous::Replace(rec, "engine command changed");
        }
        // One still loading is adopted as loading; a ready one must answer.
        if rec.ready && !self.healthy(&e.inst).await {
            return Previous::Replace(rec, "previous engine does not answer /health");
        }
        Previous::Adopt(rec)
    }

    /// Stops the previous router's engine that this one replaces, once this router is in
    /// charge: a start that fails must leave the old router its engine. False when the
    /// router is leaving meanwhile.
    async fn replace(
        &self,
        spec: &EngineSpec,
        rec: EngineRecord,
        why: &str,
        shutdown: &mut ShutdownWatch,
    ) -> bool {
        if !lifecycle::is_committed() {
            info!(instance = %spec.instance, pid = rec.pid, reason = why,
                "previous engine will be replaced once this router is in charge");
        }
        tokio::select! {
            _ = lifecycle::committed() => {}
            _ = shutdown.changed() => return false,
        }
        warn!(instance = %spec.instance, pid = rec.pid, reason = why, "stopping the previous engine to replace it");
        process::stop_group(rec.pgid, None, self.opts.stop_timeout).await;
        true
    }

    /// A live engine for this instance that another live router (the other side of a
    /// graceful upgrade) started since this router read the state file, e.g. a restart
    /// that was due just as the reload began: adopted instead of starting a second copy.
    fn claimed_elsewhere(&self, spec: &EngineSpec) -> Option<EngineRecord> {
        let rec = self.state.load().remove(&spec.instance)?;
        let owner = rec.router?;
        (Some(owner) != Owner::me() && owner.is_live() && state::matches(&rec, &spec.argv))
            .then_some(rec)
    }

    /// Once the routers that wrote the state file before this one have exited, writes it
    /// again: during the hand-over both may have written it, and the last word must be
    /// this router's.
    async fn settle_state_file(&self) {
        while self.previous_owners.iter().any(Owner::is_live) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if self.previous_owners.is_empty() || self.upgrading.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(r) = self.records.lock() {
            self.state.save(&r);
        }
    }

    /// A fresh `/health` verdict from the poller; false when none comes in time.
    async fn healthy(&self, inst: &Instance) -> bool {
        tokio::time::timeout(VERDICT_WAIT, inst.health_now())
            .await
            .unwrap_or(false)
    }

    /// One engine, forever: adopt or start, wait until ready, watch, restart with backoff.
    async fn run_engine(
        &self,
        e: &Engine,
        mut shutdown: ShutdownWatch,
        decided: &mpsc::UnboundedSender<()>,
    ) {
        let previous = self.previous_engine(e).await;
        let _ = decided.send(());
        let mut adopt = match previous {
            Previous::Adopt(rec) => Some(rec),
            Previous::Replace(rec, why) => {
                if !self.replace(&e.spec, rec, why, &mut shutdown).await {
                    return;
                }
                None
            }
            Previous::None => None,
        };
        let mut backoff = BACKOFF_START;
        loop {
            if *shutdown.borrow() || self.upgrading.load(Ordering::SeqCst) {
                return;
            }
            let started = Instant::now();
            let mut life = match adopt.take() {
                Some(rec) => self.adopted_life(e, rec, &mut shutdown).await,
                None => match self.spawned_life(e, &mut shutdown).await {
                    Spawned::Life(l) => l,
                    Spawned::Claimed(rec) => {
                        adopt = Some(rec);
                        continue;
                    }
                    Spawned::Leave => return,
                },
            };
            let Some(why) = self.after_life(&e.spec, &mut life, &mut shutdown).await else {
                return;
            };
            if started.elapsed() >= BACKOFF_RESET_AFTER {
                backoff = BACKOFF_START;
            }
            self.mark_down(e, &why, backoff);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(self.opts.restart_backoff_max);
        }
    }

    /// Takes over a running engine of the previous router and watches it.
    async fn adopted_life(
        &self,
        e: &Engine,
        rec: EngineRecord,
        shutdown: &mut ShutdownWatch,
    ) -> Life {
        let spec = &e.spec;
        info!(instance = %spec.instance, pid = rec.pid, loading = !rec.ready, "adopted running engine");
        let (pgid, ready) = (rec.pgid, rec.ready);
        process::track_adopted(pgid);
        let rec = EngineRecord {
            router: Owner::me(),
            ..rec
        };
        self.remember(&spec.instance, Some(rec.clone()));
        let end = self
            .watch(e, Proc::Adopted(rec), shutdown, ready, Vec::new())
            .await;
        Life {
            end,
            pgid,
            child: None,
            adopted: true,
        }
    }

    /// Starts the engine (after the locks of its GPUs) and watches it.
    async fn spawned_life(&self, e: &Engine, shutdown: &mut ShutdownWatch) -> Spawned {
        let (spec, inst) = (&e.spec, &e.inst);
        inst.stats().set_process(Process::Starting);
        // Held until this engine is ready: engines sharing a GPU start one after
        // another (vLLM sizes its memory assuming it is alone while it starts).
        let mut gpu_guards = Vec::new();
        for g in &spec.gpus {
            if let Some(l) = self.gpu_locks.get(g) {
                tokio::select! {
                    guard = l.clone().lock_owned() => gpu_guards.push(guard),
                    _ = shutdown.changed() => return Spawned::Leave,
                }
            }
        }
        // The other router of a graceful upgrade may have started it meanwhile.
        if let Some(rec) = self.claimed_elsewhere(spec) {
            return Spawned::Claimed(rec);
        }
        let mut child = match process::spawn(spec) {
            Ok(c) => c,
            Err(err) => {
                let why = format!("cannot start `{}`: {err}", spec.argv.join(" "));
                return Spawned::Life(Life {
                    end: End::Crashed(why),
                    pgid: 0,
                    child: None,
                    adopted: false,
                });
            }
        };
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        info!(instance = %spec.instance, pid = pgid, log = %spec.log_path.display(),
            command = %spec.argv.join(" "), "engine started");
        self.remember(
            &spec.instance,
            EngineRecord::observe(pgid, &spec.argv, false),
        );
        let end = self
            .watch(e, Proc::Child(&mut child), shutdown, false, gpu_guards)
            .await;
        Spawned::Life(Life {
            end,
            pgid,
            child: Some(child),
            adopted: false,
        })
    }

    /// After an engine's life: stops what is left of its process group (unless it is
    /// handed over or was only borrowed), and says why it must be restarted, or `None`
    /// when the engine's task ends.
    async fn after_life(
        &self,
        spec: &EngineSpec,
        life: &mut Life,
        shutdown: &mut ShutdownWatch,
    ) -> Option<String> {
        let pgid = life.pgid;
        if pgid != 0 {
            if self.upgrading.load(Ordering::SeqCst) {
                // Also when it died during the hand-over: the new router restarts it.
                info!(instance = %spec.instance, pid = pgid, "graceful upgrade: engine left to the new router");
                return None;
            }
            if life.adopted && !lifecycle::is_committed() {
                if let End::Shutdown = life.end {
                    // An abandoned start: the engine stays with the router that serves.
                    info!(instance = %spec.instance, pid = pgid, "start-up abandoned: adopted engine left running");
                    return None;
                }
                // It died while the old router may still be in charge: restart it only
                // once this one is (the restart adopts a copy the old one started).
                tokio::select! {
                    _ = lifecycle::committed() => {}
                    _ = shutdown.changed() => return None,
                }
            }
            let timeout = match life.end {
                End::Shutdown => {
                    wait_for_requests(spec).await;
                    self.opts.stop_timeout
                }
                End::Crashed(_) => Duration::from_secs(5),
            };
            process::stop_group(pgid, life.child.as_mut(), timeout).await;
            process::untrack(pgid);
            self.remember(&spec.instance, None);
        }
        match &life.end {
            End::Shutdown => {
                info!(instance = %spec.instance, "engine stopped");
                None
            }
            End::Crashed(why) => Some(why.clone()),
        }
    }

    /// No traffic to a dead engine; logged with its log's tail, counted as a restart.
    fn mark_down(&self, e: &Engine, why: &str, backoff: Duration) {
        let (spec, inst) = (&e.spec, &e.inst);
        inst.stats().set_process(Process::Down);
        inst.log_state_change(&inst.snapshot());
        crate::telemetry::metrics::ENGINE_RESTARTS
            .with_label_values(&[&spec.model, &spec.instance])
            .inc();
        error!(instance = %spec.instance, reason = %why, restart_in_s = backoff.as_secs_f64(),
            log_tail = %process::tail(&spec.log_path, 20), "engine down");
    }

    /// From spawn (or adoption) to death or shutdown: the readiness gate with progress
    /// lines (skipped for an adopted, already healthy engine), then the watch for exit or
    /// a `/health` that stays bad.
    async fn watch(
        &self,
        e: &Engine,
        mut proc: Proc<'_>,
        shutdown: &mut ShutdownWatch,
        ready: bool,
        gpu_guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) -> End {
        let (spec, inst) = (&e.spec, &e.inst);
        let t0 = Instant::now();
        if !ready {
            let mut last_progress = Instant::now();
            let mut since = now_ms();
            loop {
                tokio::select! {
                    status = proc.exited() => {
                        return End::Crashed(format!("exited during start-up ({status})"));
                    }
                    _ = shutdown.changed() => return End::Shutdown,
                    ok = inst.health_after(since, true) => {
                        if ok {
                            break;
                        }
                        since = now_ms();
                    }
                    // No verdict (the poller is slow): the limits below still apply.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if t0.elapsed() >= self.opts.startup_timeout {
                    return End::Crashed(format!(
                        "not ready after {:?} (supervisor.startup_timeout_s)",
                        self.opts.startup_timeout
                    ));
                }
                if last_progress.elapsed() >= self.opts.progress_interval {
                    info!("{}: loading, {} s", spec.instance, t0.elapsed().as_secs());
                    last_progress = Instant::now();
                }
            }
            info!(instance = %spec.instance, ready_after_s = t0.elapsed().as_secs_f64(), "engine ready");
            // The next engine on the same GPU(s) may start now.
            drop(gpu_guards);
            // The command line is recorded once ready: by then any wrapper has exec'd
            // the real engine.
            let pid = match &proc {
                Proc::Child(c) => c.id().map(|p| p as i32).unwrap_or(0),
                Proc::Adopted(rec) => rec.pid,
            };
            let rec = EngineRecord::observe(pid, &spec.argv, true);
            self.remember(&spec.instance, rec);
        }
        inst.stats().set_process(Process::Serving);
        inst.record_success();
        inst.log_state_change(&inst.snapshot());
        let mut unhealthy_since: Option<Instant> = None;
        let mut since = now_ms();
        loop {
            // Each verdict of the poller, at the model's `health_check_interval_s`.
            let ok = tokio::select! {
                status = proc.exited() => return End::Crashed(format!("exited ({status})")),
                _ = shutdown.changed() => return End::Shutdown,
                ok = inst.health_after(since, false) => ok,
            };
            since = now_ms();
            if ok {
                unhealthy_since = None;
                continue;
            }
            let since = *unhealthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.opts.unhealthy_restart_after {
                return End::Crashed(format!(
                    "GET /health failing for {:?} (supervisor.unhealthy_restart_after_s)",
                    self.opts.unhealthy_restart_after
                ));
            }
        }
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    /// Ready once every engine is adopted or started (not once it serves: a reload must
    /// not wait for a new model to load), so that the bootstrap, which lets the old router
    /// go, comes after the adoption checks.
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let n = self.engines.len();
        let announce = async move {
            for _ in 0..n {
                if rx.recv().await.is_none() {
                    break;
                }
            }
            ready.notify_ready();
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = self.run(shutdown, tx) => {}
            _ = announce => {}
        }
    }
}

impl Supervisor {
    /// Every engine's task, and the retirement of engines whose instance left the config.
    /// `decided` gets one message per engine once it is adopted or about to start.
    async fn run(&self, shutdown: ShutdownWatch, decided: mpsc::UnboundedSender<()>) {
        self.running.store(true, Ordering::SeqCst);
        let retire = futures_util::future::join_all(
            self.retiring
                .iter()
                .map(|(id, rec)| self.retire(id, rec.clone())),
        );
        tokio::join!(
            retire,
            self.settle_state_file(),
            self.run_engines(shutdown, decided)
        );
    }

    /// An exit before this router is in charge stops only the engines it spawned and
    /// puts the state file back as it was (see [`lifecycle`]); a later exit stops every
    /// engine unless they are handed over. Registered when the supervisor is built, so
    /// that a service failing before the supervisor runs is covered too.
    fn undo_at_exit(&self) {
        process::stop_at_exit();
        let (state, initial, frozen, records, running) = (
            self.state.clone(),
            self.initial.clone(),
            self.frozen.clone(),
            self.records.clone(),
            self.running.clone(),
        );
        lifecycle::at_exit(move || {
            if running.load(Ordering::SeqCst) && !lifecycle::is_committed() {
                let _writes = records.lock();
                frozen.store(true, Ordering::SeqCst);
                state.restore(&initial);
            }
        });
    }

    async fn run_engines(&self, shutdown: ShutdownWatch, decided: mpsc::UnboundedSender<()>) {
        if self.engines.is_empty() {
            return;
        }
        // A SIGQUIT (graceful upgrade) is announced before the shutdown signal: remember
        // it, so that the engines are left to the new router instead of stopped.
        if let Some(mut rx) = self.phases.lock().ok().and_then(|mut g| g.take()) {
            let flag = self.upgrading.clone();
            tokio::spawn(async move {
                while let Ok(p) = rx.recv().await {
                    if matches!(
                        p,
                        ExecutionPhase::GracefulUpgradeTransferringFds
                            | ExecutionPhase::GracefulUpgradeCloseTimeout
                    ) {
                        flag.store(true, Ordering::SeqCst);
                        process::keep_on_exit();
                    }
                }
            });
        }
        info!(engines = self.engines.len(), "supervisor: starting engines");
        crate::lifecycle::drain::set_engines_busy(true);
        futures_util::future::join_all(
            self.engines
                .iter()
                .map(|e| self.run_engine(e, shutdown.clone(), &decided)),
        )
        .await;
        crate::lifecycle::drain::set_engines_busy(false);
        if !self.upgrading.load(Ordering::SeqCst) {
            warn!("supervisor: all engines stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The parent of this test process: a live process other than this one, standing in
    /// for the other router of a graceful upgrade.
    fn other_router() -> Owner {
        let pid = nix::unistd::getppid().as_raw();
        Owner {
            pid,
            start_time: state::start_time(pid).unwrap(),
        }
    }

    #[test]
    fn an_engine_another_live_router_started_is_adopted_not_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "LLM_engines:\n  m:\n    command: [\"/bin/true\"]\n    instances:\n      - {{id: e1, host: 127.0.0.1, port: 1}}\n    model_config: {{model_tag: t}}\nsupervisor:\n  run_dir: \"{}\"\n",
            dir.path().display()
        );
        let config = Config::from_yaml_str(&yaml, Path::new("t.yaml")).unwrap();
        let registry = Registry::new(&config).unwrap();
        let (_tx, rx) = broadcast::channel(1);
        let sup = Supervisor::new(&config, &registry, rx);
        let spec = &sup.engines[0].spec;
        assert_eq!(sup.claimed_elsewhere(spec), None, "no state file");

        // A loading engine (this test process plays it: it is alive) that the other
        // router recorded after this one read the file.
        let me = std::process::id() as i32;
        let rec = EngineRecord {
            pid: me,
            pgid: me,
            argv: spec.argv.clone(),
            cmdline: Vec::new(),
            start_time: state::start_time(me).unwrap(),
            router: Some(other_router()),
            ready: false,
        };
        let write = |r: &EngineRecord| {
            sup.state
                .save(&BTreeMap::from([("e1".to_string(), r.clone())]))
        };
        write(&rec);
        assert_eq!(sup.claimed_elsewhere(spec), Some(rec.clone()));
        // Not when it is this router's own record, its router is gone, the engine is
        // gone, or it runs another command.
        for other in [
            EngineRecord {
                router: Owner::me(),
                ..rec.clone()
            },
            EngineRecord {
                router: Some(Owner {
                    start_time: 1,
                    ..other_router()
                }),
                ..rec.clone()
            },
            EngineRecord {
                start_time: rec.start_time + 1,
                ..rec.clone()
            },
            EngineRecord {
                argv: vec!["other".into()],
                ..rec.clone()
            },
        ] {
            write(&other);
            assert_eq!(sup.claimed_elsewhere(spec), None, "{other:?}");
        }
    }
}
