//! Takes the usage event the router asked for out of an event stream.
//!
//! To charge a stream its real tokens, the router adds `stream_options.include_usage`
//! to a request whose client did not ask for it; the engine then sends one more event
//! before `data: [DONE]`: `{"choices":[],"usage":{...}}`. A client that did not ask for
//! it may not expect an event without choices, so [`UsageEventFilter`] removes exactly
//! that event and passes every other byte on unchanged.
//!
//! It works on whole events (up to the blank line that ends one). An event that arrives
//! in pieces is held until its end, at most [`MAX_EVENT`] bytes; a longer one is passed
//! on as it comes (a usage event is a few hundred bytes). The output does not depend on
//! where the network cut the stream: the property test and the fuzz corpus check that.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

/// Longest event held back while it arrives.
pub const MAX_EVENT: usize = 64 * 1024;

#[derive(Debug)]
pub struct UsageEventFilter {
    /// The unfinished event (since the last event end).
    pending: BytesMut,
    /// The current line holds nothing but (maybe) `\r` so far.
    blank: bool,
    /// The current event is over [`MAX_EVENT`]: its bytes pass on as they come.
    passing: bool,
    /// Events removed.
    pub dropped: u64,
}

impl Default for UsageEventFilter {
    fn default() -> Self {
        UsageEventFilter {
            pending: BytesMut::new(),
            blank: true,
            passing: false,
            dropped: 0,
        }
    }
}

/// The two fields that tell a usage event.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

/// Whether `event` (lines, the blank end included) is `data: {"choices":[],"usage":{..}}`.
fn is_usage_event(event: &[u8]) -> bool {
    if !event.windows(7).any(|w| w == b"\"usage\"") {
        return false;
    }
    event.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(v) = line.strip_prefix(b"data:") else {
            return false;
        };
        match serde_json::from_slice::<Probe>(v) {
            Ok(p) => {
                p.choices.is_some_and(|c| c.is_empty()) && p.usage.is_some_and(|u| !u.is_null())
            }
            Err(_) => false,
        }
    })
}

impl UsageEventFilter {
    /// What of `chunk` goes to the client now (maybe nothing).
    pub fn filter(&mut self, chunk: Bytes) -> Bytes {
        // The common case: a chunk of whole events without a usage event.
        if self.pending.is_empty()
            && !self.passing
            && ends_events(&chunk)
            && !mentions_usage(&chunk)
        {
            return chunk;
        }
        let mut out = BytesMut::new();
        let mut from = 0;
        for (i, &b) in chunk.iter().enumerate() {
            match b {
                b'\n' if self.blank => {
                    // The end of an event.
                    self.take(&chunk[from..=i], &mut out);
                    from = i + 1;
                }
                b'\n' => self.blank = true,
                b'\r' => {}
                _ => self.blank = false,
            }
        }
        let rest = &chunk[from..];
        if self.passing {
            out.extend_from_slice(rest);
        } else if self.pending.len() + rest.len() > MAX_EVENT {
            out.extend_from_slice(&self.pending);
            out.extend_from_slice(rest);
            self.pending.clear();
            self.passing = true;
        } else {
            self.pending.extend_from_slice(rest);
        }
        out.freeze()
    }

    /// The end of one event (`tail`: its last bytes, the blank line included).
    fn take(&mut self, tail: &[u8], out: &mut BytesMut) {
        if std::mem::take(&mut self.passing) {
            out.extend_from_slice(tail);
            return;
        }
        self.pending.extend_from_slice(tail);
        if is_usage_event(&self.pending) {
            self.dropped += 1;
        } else {
            out.extend_from_slice(&self.pending);
        }
        self.pending.clear();
    }

    /// The stream ended: an unfinished last event goes on as it is.
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }
}

fn mentions_usage(b: &[u8]) -> bool {
    b.windows(7).any(|w| w == b"\"usage\"")
}

/// Whether `b` ends with a blank line (`\n\n`, `\n\r\n`).
fn ends_events(b: &[u8]) -> bool {
    b.ends_with(b"\n\n") || b.ends_with(b"\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONTENT: &str =
        "data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\r\n\r\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut f = UsageEventFilter::default();
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(p)));
        }
        out.extend_from_slice(&f.finish());
        (out, f.dropped)
    }

    #[test]
    fn the_usage_event_is_removed_and_nothing_else() {
        let stream = format!("{CONTENT}{CONTENT}{USAGE}{DONE}");
        let (out, dropped) = run(&[stream.as_bytes()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{CONTENT}{CONTENT}{DONE}")
        );
        assert_eq!(dropped, 1);
        // Usage on a chunk with choices (continuous_usage_stats) stays.
        let with_choices =
            "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        assert_eq!(run(&[with_choices.as_bytes()]).0, with_choices.as_bytes());
    }

    #[test]
    fn content_events_leave_at_once_and_an_unfinished_one_at_the_end() {
        let mut f = UsageEventFilter::default();
        let c = Bytes::from_static(CONTENT.as_bytes());
        assert_eq!(f.filter(c.clone()), c);
        assert_eq!(&f.filter(Bytes::from_static(b"data: {\"cho"))[..], b"");
        assert_eq!(
            &f.filter(Bytes::from_static(b"ices\":[]}\n\ndata: x"))[..],
            b"data: {\"choices\":[]}\n\n"
        );
        assert_eq!(&f.finish()[..], b"data: x");
    }

    #[test]
    fn an_event_over_the_limit_passes_as_it_comes() {
        let big = format!("data: \"{}\"\n\n", "x".repeat(MAX_EVENT));
        let stream = format!("{big}{USAGE}{DONE}");
        let pieces: Vec<&[u8]> = stream.as_bytes().chunks(1000).collect();
        let (out, dropped) = run(&pieces);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{big}{DONE}"));
        assert_eq!(dropped, 1);
    }

    proptest! {
        /// However the stream is cut, the client gets the same bytes.
        #[test]
        fn output_does_not_depend_on_the_cuts(
            events in proptest::collection::vec(0usize..3, 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let parts = [CONTENT, USAGE, DONE];
            let stream: String = events.iter().map(|&i| parts[i]).collect();
            let want: String = events.iter().filter(|&&i| i != 1).map(|&i| parts[i]).collect();
            let bytes = stream.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.sort();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&bytes[at..c]);
                at = c;
            }
            pieces.push(&bytes[at..]);
            let (out, _) = run(&pieces);
            prop_assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
