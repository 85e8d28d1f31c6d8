//! Dynamic batching: requests queue per model and a dedicated inference thread takes as
//! many as fit in a token budget, sorts the items by length (so padding stays small),
//! runs them and hands each request its results. A full queue refuses at once (429);
//! a request whose client left is skipped.

use std::sync::Arc;
use std::time::Instant;

use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};
use std::sync::LazyLock;
use tokenizers::Encoding;
use tokio::sync::{mpsc, oneshot};
use tracing::error;

use super::model::OnnxModel;

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

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
    pub max_queue: usize,
}

type Reply = Result<Vec<Vec<f32>>, String>;

struct Job {
    items: Vec<Encoding>,
    reply: oneshot::Sender<Reply>,
    enqueued: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: answer 429.
    Overloaded,
    Failed(String),
}

/// The queue in front of one model.
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    pub model: Arc<OnnxModel>,
}

impl Batcher {
    /// Starts the model's inference thread.
    pub fn new(model: Arc<OnnxModel>, opts: BatchOptions) -> Batcher {
        let (tx, rx) = mpsc::channel(opts.max_queue);
        let m = model.clone();
        let name = format!("embed-{}", model.name);
        let spawned = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || worker(m, rx, opts));
        if let Err(e) = spawned {
            error!(model = %model.name, error = %e, "cannot start the inference thread");
        }
        Batcher { tx, model }
    }

    /// Queues `items` and waits for their vectors (or scores), in order.
    pub async fn submit(&self, items: Vec<Encoding>) -> Result<Vec<Vec<f32>>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            items,
            reply,
            enqueued: Instant::now(),
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
}

/// Blocking loop of one model's inference thread.
fn worker(model: Arc<OnnxModel>, mut rx: mpsc::Receiver<Job>, opts: BatchOptions) {
    let size = BATCH_SIZE.with_label_values(&[&model.name]);
    let waited = QUEUE_SECONDS.with_label_values(&[&model.name]);
    let items = ITEMS.with_label_values(&[&model.name]);
    while let Some(first) = rx.blocking_recv() {
        // Take what is queued, up to the budget (counted unpadded; padding is bounded by
        // sorting below).
        let mut jobs = vec![first];
        let mut tokens: usize = jobs[0].items.iter().map(|e| e.len()).sum();
        let mut count = jobs[0].items.len();
        while tokens < opts.max_batch_tokens && count < opts.max_batch_size {
            match rx.try_recv() {
                Ok(j) => {
                    tokens += j.items.iter().map(|e| e.len()).sum::<usize>();
                    count += j.items.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // Clients that left while queued are not computed for.
        jobs.retain(|j| !j.reply.is_closed());
        for j in &jobs {
            waited.observe(j.enqueued.elapsed().as_secs_f64());
        }
        // Every item, longest first, remembering whose it is.
        let mut order: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.items.len()).map(move |i| (j, i)))
            .collect();
        order.sort_by_key(|&(j, i)| std::cmp::Reverse(jobs[j].items[i].len()));
        let mut results: Vec<Vec<Option<Vec<f32>>>> =
            jobs.iter().map(|j| vec![None; j.items.len()]).collect();
        let mut failure: Option<String> = None;
        let mut start = 0;
        while start < order.len() && failure.is_none() {
            // Longest first: the first item sets the padded width of this chunk.
            let width = jobs[order[start].0].items[order[start].1].len().max(1);
            let fit = (opts.max_batch_tokens / width).clamp(1, opts.max_batch_size);
            let end = (start + fit).min(order.len());
            let chunk: Vec<&Encoding> = order[start..end]
                .iter()
                .map(|&(j, i)| &jobs[j].items[i])
                .collect();
            size.observe(chunk.len() as f64);
            match model.run(&chunk) {
                Ok(out) => {
                    items.inc_by(chunk.len() as u64);
                    for (&(j, i), v) in order[start..end].iter().zip(out) {
                        results[j][i] = Some(v);
                    }
                }
                Err(e) => failure = Some(e),
            }
            start = end;
        }
        for (job, res) in jobs.into_iter().zip(results) {
            let reply = match &failure {
                Some(e) => Err(e.clone()),
                None => Ok(res.into_iter().map(Option::unwrap_or_default).collect()),
            };
            let _ = job.reply.send(reply);
        }
    }
}
