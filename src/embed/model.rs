//! One ONNX model (embedder or cross-encoder) with its tokenizer: the backend that the
//! batching queue drives. Batches are padded to their longest item, never to
//! `max_length` (padding to 512 made bge-small ~40x slower).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

pub use crate::config::Pooling;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedding,
    Rerank,
}

/// What loading a model needs.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub kind: Kind,
    /// `model.onnx`, or a directory holding it.
    pub model_path: PathBuf,
    /// `tokenizer.json`, or a directory holding it.
    pub tokenizer_path: PathBuf,
    pub max_length: usize,
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    pub threads: usize,
}

pub struct OnnxModel {
    pub name: String,
    pub kind: Kind,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_length: usize,
    tokenizer: Tokenizer,
    /// Token ids the tokenizer knows (added tokens included).
    vocab_size: usize,
    /// Run by the model's one worker thread; the lock is never contended.
    session: Mutex<Session>,
    wants_token_types: bool,
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `lib` once per process. A missing or wrong library is one
/// clear error naming both ways to give its path.
pub fn init_runtime(lib: &Path) -> Result<(), String> {
    ENVIRONMENT
        .get_or_init(|| {
            if !lib.exists() {
                return Err(format!(
                    "ONNX Runtime library not found at {} (set embedding_server.onnxruntime_path or ORT_DYLIB_PATH; `make models` installs it)",
                    lib.display()
                ));
            }
            ort::init_from(lib)
                .map_err(|e| {
                    format!(
                        "cannot load ONNX Runtime from {} (embedding_server.onnxruntime_path / ORT_DYLIB_PATH): {e}",
                        lib.display()
                    )
                })?
                .with_name("llm-router")
                .build()
                .map_err(|e| format!("cannot initialise ONNX Runtime: {e}"))
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

fn file_in(path: &Path, name: &str) -> PathBuf {
    if path.is_dir() {
        path.join(name)
    } else {
        path.to_path_buf()
    }
}

/// The pooling a sentence-transformers model folder declares (`1_Pooling/config.json`).
fn declared_pooling(model_path: &Path) -> Option<Pooling> {
    let dir = if model_path.is_dir() {
        model_path
    } else {
        model_path.parent()?
    };
    let text = std::fs::read_to_string(dir.join("1_Pooling/config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v["pooling_mode_cls_token"] == true {
        Some(Pooling::Cls)
    } else if v["pooling_mode_mean_tokens"] == true {
        Some(Pooling::Mean)
    } else {
        None
    }
}

impl OnnxModel {
    pub fn load(spec: &ModelSpec) -> Result<OnnxModel, String> {
        let env = ENVIRONMENT
            .get()
            .and_then(|e| e.as_ref().ok())
            .ok_or("ONNX Runtime is not initialised")?;
        let model_file = file_in(&spec.model_path, "model.onnx");
        let tok_file = file_in(&spec.tokenizer_path, "tokenizer.json");
        let ctx = |what: &str, e: String| format!("model {}: {what}: {e}", spec.name);
        let mut tokenizer = Tokenizer::from_file(&tok_file).map_err(|e| {
            ctx(
                &format!("cannot load tokenizer {}", tok_file.display()),
                e.to_string(),
            )
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_length,
                ..Default::default()
            }))
            .map_err(|e| ctx("tokenizer truncation", e.to_string()))?;
        let session = Session::builder(env)
            .map_err(|e| ctx("session", e.to_string()))?
            .with_intra_threads(spec.threads.max(1))
            .map_err(|e| ctx("session threads", e.to_string()))?
            .commit_from_file(&model_file)
            .map_err(|e| {
                ctx(
                    &format!("cannot load {}", model_file.display()),
                    e.to_string(),
                )
            })?;
        let wants_token_types = session
            .inputs()
            .iter()
            .any(|i| i.name() == "token_type_ids");
        let pooling = spec
            .pooling
            .or_else(|| declared_pooling(&spec.model_path))
            .unwrap_or(Pooling::Cls);
        Ok(OnnxModel {
            name: spec.name.clone(),
            kind: spec.kind,
            pooling,
            normalize: spec.normalize,
            max_length: spec.max_length,
            vocab_size: tokenizer.get_vocab_size(true),
            tokenizer,
            session: Mutex::new(session),
            wants_token_types,
        })
    }

    /// Tokenizes one text (or a query/document pair for a cross-encoder).
    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Encoding, String> {
        let r = match pair {
            None => self.tokenizer.encode(text, true),
            Some(p) => self.tokenizer.encode((text, p), true),
        };
        r.map_err(|e| format!("tokenizer: {e}"))
    }

    /// Wraps token ids given by the client (already tokenized input). An id outside the
    /// vocabulary is refused here: the forward pass would fail on it, and with it every
    /// request batched with it. The error names the id's position.
    pub fn encode_ids(&self, ids: &[u32]) -> Result<Encoding, OutOfVocabulary> {
        let vocab = self.vocab_size;
        if let Some((position, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab)
        {
            return Err(OutOfVocabulary {
                position,
                id,
                vocab,
            });
        }
        let n = ids.len().min(self.max_length);
        Ok(plain_encoding(ids[..n].to_vec()))
    }
}

/// An encoding of bare token ids: one sequence, every token attended to.
pub fn plain_encoding(ids: Vec<u32>) -> Encoding {
    let n = ids.len();
    Encoding::new(
        ids,
        vec![0; n],
        vec![String::new(); n],
        vec![None; n],
        vec![(0, 0); n],
        vec![0; n],
        vec![1; n],
        vec![],
        Default::default(),
    )
}

/// A client's token id the model has no embedding for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfVocabulary {
    /// Where in the client's list of ids.
    pub position: usize,
    pub id: u32,
    /// Ids run from 0 to `vocab - 1`.
    pub vocab: usize,
}

/// A batch as the model takes it: every item padded to the longest, row-major.
struct Padded {
    rows: usize,
    seq: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

impl Padded {
    fn new(batch: &[&Encoding]) -> Self {
        let rows = batch.len();
        let seq = batch
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut p = Padded {
            rows,
            seq,
            ids: vec![0; rows * seq],
            mask: vec![0; rows * seq],
            types: vec![0; rows * seq],
        };
        for (r, e) in batch.iter().enumerate() {
            let tokens = e
                .get_ids()
                .iter()
                .zip(e.get_attention_mask())
                .zip(e.get_type_ids());
            for (c, ((id, m), t)) in tokens.enumerate() {
                p.ids[r * seq + c] = *id as i64;
                p.mask[r * seq + c] = *m as i64;
                p.types[r * seq + c] = *t as i64;
            }
        }
        p
    }
}

impl OnnxModel {
    /// One sentence vector per row of `hidden` (`[rows, seq, dim]`): pooled over the
    /// row's tokens, then normalized when the model says so.
    fn pool(&self, hidden: &[f32], shape: &[i64], p: &Padded) -> Result<Vec<Vec<f32>>, String> {
        if shape.len() != 3 {
            return Err(format!("expected [batch, seq, dim] output, got {shape:?}"));
        }
        let (seq, dim) = (p.seq, shape[2] as usize);
        let mut out = Vec::with_capacity(p.rows);
        for r in 0..p.rows {
            let mut v = vec![0f32; dim];
            match self.pooling {
                Pooling::Cls => v.copy_from_slice(&hidden[r * seq * dim..r * seq * dim + dim]),
                Pooling::Mean => {
                    let mut n = 0f32;
                    for c in (0..seq).filter(|c| p.mask[r * seq + c] != 0) {
                        n += 1.0;
                        let row = &hidden[(r * seq + c) * dim..(r * seq + c + 1) * dim];
                        v.iter_mut().zip(row).for_each(|(a, x)| *a += x);
                    }
                    v.iter_mut().for_each(|a| *a /= n.max(1.0));
                }
            }
            if self.normalize {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
            out.push(v);
        }
        Ok(out)
    }
}

impl super::batch::Backend for OnnxModel {
    /// Runs one batch: sentence vectors (embedders) or one logit per item (rerankers).
    fn run(&self, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>, String> {
        let mut p = Padded::new(batch);
        let shape = vec![p.rows as i64, p.seq as i64];
        let tensor = |data: Vec<i64>| -> Result<SessionInputValue<'static>, String> {
            Tensor::from_array((shape.clone(), data))
                .map(Into::into)
                .map_err(|e| e.to_string())
        };
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("input_ids".into(), tensor(std::mem::take(&mut p.ids))?),
            ("attention_mask".into(), tensor(p.mask.clone())?),
        ];
        if self.wants_token_types {
            inputs.push((
                "token_type_ids".into(),
                tensor(std::mem::take(&mut p.types))?,
            ));
        }
        // A panic while the lock was held happened in our own code around the session,
        // not inside ONNX Runtime: the session itself is intact.
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session.run(inputs).map_err(|e| format!("inference: {e}"))?;
        let (out_shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| format!("output: {e}"))?;
        match self.kind {
            Kind::Rerank => {
                // logits [batch, labels]: the first label is the relevance.
                let width = out_shape.get(1).copied().unwrap_or(1).max(1) as usize;
                Ok((0..p.rows).map(|r| vec![data[r * width]]).collect())
            }
            Kind::Embedding => self.pool(data, out_shape, &p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::batch::Backend;

    fn models_dir() -> Option<PathBuf> {
        let d = PathBuf::from("models");
        d.join("onnxruntime/libonnxruntime.so.1.31.1")
            .exists()
            .then_some(d)
    }

    fn load(name: &str, kind: Kind, pooling: Pooling) -> Option<OnnxModel> {
        let d = models_dir()?;
        init_runtime(&d.join("onnxruntime/libonnxruntime.so.1.31.1")).unwrap();
        Some(
            OnnxModel::load(&ModelSpec {
                name: name.into(),
                kind,
                model_path: d.join(name),
                tokenizer_path: d.join(name),
                max_length: 512,
                pooling: Some(pooling),
                normalize: true,
                threads: 2,
            })
            .unwrap(),
        )
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn bge_small_embeds_paraphrases_closer() {
        let Some(m) = load("bge-small-en-v1.5", Kind::Embedding, Pooling::Cls) else {
            eprintln!("models/ missing (make models): skipped");
            return;
        };
        let texts = [
            "The cat sits on the mat.",
            "A cat is sitting on a rug.",
            "Stock markets fell sharply today.",
        ];
        let enc: Vec<Encoding> = texts.iter().map(|t| m.encode(t, None).unwrap()).collect();
        let v = m.run(&enc.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(v[0].len(), 384);
        assert!((cos(&v[0], &v[0]) - 1.0).abs() < 1e-4);
        assert!(
            cos(&v[0], &v[1]) > cos(&v[0], &v[2]) + 0.2,
            "{} vs {}",
            cos(&v[0], &v[1]),
            cos(&v[0], &v[2])
        );
    }

    #[test]
    fn reranker_ranks_the_answer_first() {
        let Some(m) = load("ms-marco-MiniLM-L-12-v2", Kind::Rerank, Pooling::Cls) else {
            return;
        };
        let q = "How many people live in Berlin?";
        let docs = [
            "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
            "New York City is famous for the Metropolitan Museum of Art.",
        ];
        let enc: Vec<Encoding> = docs.iter().map(|d| m.encode(q, Some(d)).unwrap()).collect();
        let s = m.run(&enc.iter().collect::<Vec<_>>()).unwrap();
        assert!(s[0][0] > 5.0 && s[1][0] < 0.0, "{s:?}");
    }

    #[test]
    fn token_ids_outside_the_vocabulary_are_refused_before_inference() {
        let Some(m) = load("bge-small-en-v1.5", Kind::Embedding, Pooling::Cls) else {
            return;
        };
        let vocab = m.vocab_size as u32;
        assert_eq!(vocab, 30522);
        assert!(m.encode_ids(&[101, vocab - 1, 102]).is_ok());
        assert_eq!(
            m.encode_ids(&[101, 2054, vocab, 102]).unwrap_err(),
            OutOfVocabulary {
                position: 2,
                id: vocab,
                vocab: 30522
            }
        );
        // What the check spares the batch: the forward pass fails on such an id.
        let good = m.encode_ids(&[101, 102]).unwrap();
        let raw = plain_encoding(vec![101, vocab + 5]);
        assert!(m.run(&[&good, &raw]).is_err());
        assert!(m.run(&[&good]).is_ok());
    }
}
