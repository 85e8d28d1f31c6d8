//! Dynamic batching: requests queue per model and a dedicated inference thread takes as
//! many as fit in a token budget, sorts the items by length (so padding stays small),
//! runs them and hands each request its results. The queue is bounded twice, by
//! requests and by tokens, and a full queue refuses at once (503); a request whose
//! client left is skipped. A failing or panicking forward pass fails only the requests
//! whose items it held; the thread goes on serving.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};
use std::sync::LazyLock;
use tokenizers::Encoding;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "llm_router_embed_batch_size",
        "Items per inference batch of the embedding service",
        &["model"],
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
    )
    .expect("metric registers once")
});

static QUEUE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "llm_router_embed_queue_seconds",
        "Time a request waited for its batch",
        &["model"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .expect("metric registers once")
});

/// Items computed (texts embedded, pairs scored): `rate()` of it is the items/s.
static ITEMS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "llm_router_embed_items_total",
        "Items (texts or query-document pairs) computed by the embedding service",
        &["model"]
    )
    .expect("metric registers once")
});

/// Requests whose forward pass failed (an inference error or a panic), per model.
static FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "llm_router_embed_failed_requests_total",
        "Requests of the embedding service whose inference failed (error or panic)",
        &["model"]
    )
    .expect("metric registers once")
});

/// What the queue drives: one model's forward pass over a batch of encodings, one
/// output vector per item, in order. [`super::model::OnnxModel`] is the one in
/// production.
pub trait Backend: Send + Sync + 'static {
    fn run(&self, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>, String>;
}

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Tokens per forward pass (items x longest item).
    pub max_batch_tokens: usize,
    /// Items per forward pass.
    pub max_batch_size: usize,
    /// Requests queued or being computed before 503.
    pub max_queue: usize,
    /// Tokens queued or being computed before 503: bounds the memory of the queue
    /// whatever the request sizes.
    pub max_queue_tokens: usize,
}

type Reply = Result<Vec<Vec<f32>>, String>;

/// What is queued: its tokens count against the queue until it is dropped (answered,
/// or abandoned by a client that left).
struct Job {
    items: Vec<Encoding>,
    reply: oneshot::Sender<Reply>,
    enqueued: Instant,
    _held: Held,
}

/// Tokens held in the queue by one job.
struct Held {
    tokens: usize,
    load: Arc<Load>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.load.tokens.fetch_sub(self.tokens, Ordering::AcqRel);
        self.load.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one model's queue holds now, and what it failed; read by `/health`.
#[derive(Default)]
pub struct Load {
    tokens: AtomicUsize,
    requests: AtomicUsize,
    failed: AtomicU64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: answer 503.
    Overloaded,
    /// One request with more tokens than the whole queue may hold: it can never run.
    TooLarge {
        tokens: usize,
        max: usize,
    },
    Failed(String),
}

/// A snapshot of one queue for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// The inference thread is running.
    pub serving: bool,
    pub queued_requests: usize,
    pub queued_tokens: usize,
    pub failed_requests: u64,
}

/// The queue in front of one model.
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    load: Arc<Load>,
    max_queue_tokens: usize,
}

impl Batcher {
    /// Starts the model's inference thread, named after the model.
    pub fn new(name: &str, backend: Arc<dyn Backend>, opts: BatchOptions) -> Batcher {
        let (tx, rx) = mpsc::channel(opts.max_queue);
        let load = Arc::new(Load::default());
        let worker_load = load.clone();
        let model = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("embed-{name}").chars().take(15).collect())
            .spawn(move || worker(&model, backend, rx, opts, &worker_load));
        if let Err(e) = spawned {
            error!(model = %name, error = %e, "cannot start the inference thread");
        }
        Batcher {
            tx,
            load,
            max_queue_tokens: opts.max_queue_tokens,
        }
    }

    /// Queues `items` and waits for their vectors (or scores), in order.
    pub async fn submit(&self, items: Vec<Encoding>) -> Result<Vec<Vec<f32>>, SubmitError> {
        let tokens: usize = items.iter().map(Encoding::len).sum();
        if tokens > self.max_queue_tokens {
            return Err(SubmitError::TooLarge {
                tokens,
                max: self.max_queue_tokens,
            });
        }
        let held = self.hold(tokens)?;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            items,
            reply,
            enqueued: Instant::now(),
            _held: held,
        };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => {
                SubmitError::Failed("inference thread stopped".into())
            }
        })?;
        rx.await
            .map_err(|_| SubmitError::Failed("inference thread stopped".into()))?
            .map_err(SubmitError::Failed)
    }

    /// Reserves `tokens` of the queue's token budget, or refuses.
    fn hold(&self, tokens: usize) -> Result<Held, SubmitError> {
        let before = self.load.tokens.fetch_add(tokens, Ordering::AcqRel);
        self.load.requests.fetch_add(1, Ordering::AcqRel);
        let held = Held {
            tokens,
            load: self.load.clone(),
        };
        if before + tokens > self.max_queue_tokens {
            return Err(SubmitError::Overloaded);
        }
        Ok(held)
    }

    pub fn state(&self) -> QueueState {
        QueueState {
            serving: !self.tx.is_closed(),
            queued_requests: self.load.requests.load(Ordering::Acquire),
            queued_tokens: self.load.tokens.load(Ordering::Acquire),
            failed_requests: self.load.failed.load(Ordering::Acquire),
        }
    }
}

/// The metrics of one model's thread.
struct Meters {
    size: prometheus::Histogram,
    waited: prometheus::Histogram,
    items: prometheus::IntCounter,
    failed: prometheus::IntCounter,
}

/// Blocking loop of one model's inference thread.
fn worker(
    model: &str,
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Job>,
    opts: BatchOptions,
    load: &Load,
) {
    let m = Meters {
        size: BATCH_SIZE.with_label_values(&[model]),
        waited: QUEUE_SECONDS.with_label_values(&[model]),
        items: ITEMS.with_label_values(&[model]),
        failed: FAILED.with_label_values(&[model]),
    };
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = take(first, &mut rx, &opts);
        // Clients that left while queued are not computed for.
        jobs.retain(|j| !j.reply.is_closed());
        for j in &jobs {
            m.waited.observe(j.enqueued.elapsed().as_secs_f64());
        }
        let replies = compute(backend.as_ref(), &jobs, &opts, &m);
        for (job, reply) in jobs.into_iter().zip(replies) {
            if let Err(e) = &reply {
                warn!(model, error = %e, "embedding request failed");
                m.failed.inc();
                load.failed.fetch_add(1, Ordering::AcqRel);
            }
            // The queue's count is given back before the answer goes out: a client that
            // has its answer is never still counted as queued.
            let Job {
                reply: tx, _held, ..
            } = job;
            drop(_held);
            let _ = tx.send(reply);
        }
    }
}

/// `first` and what else is queued, up to the budget (counted unpadded; padding is
/// bounded by sorting in [`compute`]).
fn take(first: Job, rx: &mut mpsc::Receiver<Job>, opts: &BatchOptions) -> Vec<Job> {
    let mut tokens: usize = first.items.iter().map(Encoding::len).sum();
    let mut count = first.items.len();
    let mut jobs = vec![first];
    while tokens < opts.max_batch_tokens && count < opts.max_batch_size {
        match rx.try_recv() {
            Ok(j) => {
                tokens += j.items.iter().map(Encoding::len).sum::<usize>();
                count += j.items.len();
                jobs.push(j);
            }
            Err(_) => break,
        }
    }
    jobs
}

/// Runs every item of `jobs`, longest first in chunks that fit the budget, and returns
/// each job's reply. A chunk that fails is retried job by job, so only the requests
/// whose own items fail get the error.
fn compute(backend: &dyn Backend, jobs: &[Job], opts: &BatchOptions, m: &Meters) -> Vec<Reply> {
    // Every item, longest first, remembering whose it is.
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.items.len()).map(move |i| (j, i)))
        .collect();
    order.sort_by_key(|&(j, i)| std::cmp::Reverse(jobs[j].items[i].len()));
    let mut results: Vec<Vec<Vec<f32>>> =
        jobs.iter().map(|j| vec![vec![]; j.items.len()]).collect();
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
    let mut start = 0;
    while start < order.len() {
        // Longest first: the first item sets the padded width of this chunk.
        let width = jobs[order[start].0].items[order[start].1].len().max(1);
        let fit = (opts.max_batch_tokens / width).clamp(1, opts.max_batch_size);
        let end = (start + fit).min(order.len());
        let chunk: Vec<(usize, usize)> = order[start..end]
            .iter()
            .copied()
            .filter(|&(j, _)| failed[j].is_none())
            .collect();
        start = end;
        if chunk.is_empty() {
            continue;
        }
        match forward(backend, jobs, &chunk, m) {
            Ok(out) => place(&mut results, &chunk, out),
            Err(e) => isolate(backend, jobs, &chunk, e, m, &mut results, &mut failed),
        }
    }
    results
        .into_iter()
        .zip(failed)
        .map(|(r, f)| match f {
            Some(e) => Err(e),
            None => Ok(r),
        })
        .collect()
}

/// After `chunk` failed with `e`: each job's part of it runs alone.
fn isolate(
    backend: &dyn Backend,
    jobs: &[Job],
    chunk: &[(usize, usize)],
    e: String,
    m: &Meters,
    results: &mut [Vec<Vec<f32>>],
    failed: &mut [Option<String>],
) {
    let mut owners: Vec<usize> = chunk.iter().map(|&(j, _)| j).collect();
    owners.sort_unstable();
    owners.dedup();
    if owners.len() == 1 {
        failed[owners[0]] = Some(e);
        return;
    }
    for j in owners {
        let part: Vec<(usize, usize)> = chunk.iter().copied().filter(|&(o, _)| o == j).collect();
        match forward(backend, jobs, &part, m) {
            Ok(out) => place(results, &part, out),
            Err(e) => failed[j] = Some(e),
        }
    }
}

fn place(results: &mut [Vec<Vec<f32>>], chunk: &[(usize, usize)], out: Vec<Vec<f32>>) {
    for (&(j, i), v) in chunk.iter().zip(out) {
        results[j][i] = v;
    }
}

/// One forward pass; a panic inside it is an error like any other (the thread lives on).
fn forward(
    backend: &dyn Backend,
    jobs: &[Job],
    chunk: &[(usize, usize)],
    m: &Meters,
) -> Result<Vec<Vec<f32>>, String> {
    let batch: Vec<&Encoding> = chunk.iter().map(|&(j, i)| &jobs[j].items[i]).collect();
    m.size.observe(batch.len() as f64);
    let out = catch_unwind(AssertUnwindSafe(|| backend.run(&batch)))
        .unwrap_or_else(|p| Err(format!("inference panicked: {}", panic_message(&*p))))?;
    if out.len() != batch.len() {
        return Err(format!(
            "the model returned {} outputs for {} inputs",
            out.len(),
            batch.len()
        ));
    }
    m.items.inc_by(batch.len() as u64);
    Ok(out)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A stand-in for a model: each item's vector is its first token id. Id 666 panics,
    /// 667 fails, 1 waits until the test opens the gate (so that the next requests queue
    /// up and are taken as one batch).
    struct Probe {
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Backend for Probe {
        fn run(&self, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>, String> {
            let first = |e: &Encoding| e.get_ids()[0];
            if batch.iter().any(|e| first(e) == 1) {
                let _ = self.gate.lock().unwrap().recv();
            }
            if batch.iter().any(|e| first(e) == 666) {
                panic!("boom");
            }
            if batch.iter().any(|e| first(e) == 667) {
                return Err("bad input tensor".into());
            }
            Ok(batch.iter().map(|e| vec![first(e) as f32]).collect())
        }
    }

    fn item(id: u32, len: usize) -> Encoding {
        let mut ids = vec![id];
        ids.resize(len, 7);
        crate::embed::model::plain_encoding(ids)
    }

    fn batcher(max_queue_tokens: usize) -> (Arc<Batcher>, std::sync::mpsc::Sender<()>) {
        let (open, gate) = std::sync::mpsc::channel();
        let opts = BatchOptions {
            max_batch_tokens: 1024,
            max_batch_size: 64,
            max_queue: 16,
            max_queue_tokens,
        };
        let probe = Arc::new(Probe {
            gate: Mutex::new(gate),
        });
        (Arc::new(Batcher::new("probe", probe, opts)), open)
    }

    async fn until(b: &Batcher, cond: impl Fn(QueueState) -> bool) {
        let t0 = Instant::now();
        while !cond(b.state()) {
            assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", b.state());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn spawn(
        b: &Arc<Batcher>,
        items: Vec<Encoding>,
    ) -> tokio::task::JoinHandle<Result<Vec<Vec<f32>>, SubmitError>> {
        let b = b.clone();
        tokio::spawn(async move { b.submit(items).await })
    }

    #[tokio::test]
    async fn a_panic_or_error_fails_only_its_own_request_and_the_thread_serves_on() {
        let (b, open) = batcher(10_000);
        let busy = spawn(&b, vec![item(1, 4)]);
        until(&b, |s| s.queued_requests == 1).await;
        // Three requests queue behind the busy one and are taken as one batch.
        let good = spawn(&b, vec![item(5, 4), item(6, 2)]);
        let panics = spawn(&b, vec![item(666, 3)]);
        let fails = spawn(&b, vec![item(8, 4), item(667, 4)]);
        until(&b, |s| s.queued_requests == 4).await;
        open.send(()).unwrap();
        assert_eq!(busy.await.unwrap().unwrap(), vec![vec![1.0]]);
        assert_eq!(good.await.unwrap().unwrap(), vec![vec![5.0], vec![6.0]]);
        let p = panics.await.unwrap().unwrap_err();
        assert!(
            matches!(&p, SubmitError::Failed(m) if m.contains("panicked: boom")),
            "{p:?}"
        );
        let f = fails.await.unwrap().unwrap_err();
        assert_eq!(f, SubmitError::Failed("bad input tensor".into()));
        assert_eq!(b.submit(vec![item(9, 2)]).await.unwrap(), vec![vec![9.0]]);
        let s = b.state();
        assert!(s.serving);
        assert_eq!(
            (s.failed_requests, s.queued_requests, s.queued_tokens),
            (2, 0, 0)
        );
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_tokens() {
        let (b, open) = batcher(100);
        assert_eq!(
            b.submit(vec![item(5, 60), item(5, 41)]).await,
            Err(SubmitError::TooLarge {
                tokens: 101,
                max: 100
            })
        );
        let busy = spawn(&b, vec![item(1, 60)]);
        until(&b, |s| s.queued_tokens == 60).await;
        let fits = spawn(&b, vec![item(2, 40)]);
        until(&b, |s| s.queued_tokens == 100).await;
        assert_eq!(
            b.submit(vec![item(3, 1)]).await,
            Err(SubmitError::Overloaded)
        );
        assert_eq!(
            b.state().queued_tokens,
            100,
            "a refused request holds nothing"
        );
        open.send(()).unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(fits.await.unwrap().unwrap(), vec![vec![2.0]]);
        until(&b, |s| s.queued_tokens == 0).await;
        assert!(b.submit(vec![item(3, 100)]).await.is_ok());
    }
}
