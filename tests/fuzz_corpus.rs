//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the same
//! checks the libFuzzer targets run, so that a finding once minimised and committed stays
//! fixed, and the seeds keep exercising the parsers, under a plain `cargo test`.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "{}: only {} seeds",
        dir.display(),
        files.len()
    );
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Err(p) = std::panic::catch_unwind(|| check(&data)) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target}: {} fails: {msg}", f.display());
        }
    }
    eprintln!("{target}: {} corpus files replayed", files.len());
}

#[test]
fn body_probe_corpus() {
    replay("body_probe", harness::body_probe);
}

#[test]
fn metrics_page_corpus() {
    replay("metrics_page", harness::metrics_page);
}

#[test]
fn sse_usage_corpus() {
    replay("sse_usage", harness::sse_usage);
}

#[test]
fn request_head_corpus() {
    replay("request_head", harness::request_head);
}

#[test]
fn usage_event_corpus() {
    replay("usage_event", harness::usage_event);
}

#[test]
fn multipart_corpus() {
    replay("multipart", harness::multipart);
}
