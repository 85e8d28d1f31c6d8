//! The engine's `usage` (prompt and completion tokens) read from its answer as it
//! streams past: from a JSON body, or from the `data:` line of an event stream that
//! carries it (vLLM's last chunk with `stream_options.include_usage`). Three APIs name
//! it: OpenAI's chat and completions (`usage: {prompt_tokens, completion_tokens}`), its
//! Responses API (`input_tokens`, `output_tokens`; in a stream, under the `response` of
//! `response.completed`) and Anthropic's Messages (`input_tokens`, `output_tokens`; in a
//! stream, under the `message` of `message_start`, then the top-level `usage` of
//! `message_delta`, whose count is the final one).
//!
//! The scanner sees the stream in whatever pieces the network delivers, so a line may
//! be split anywhere (inside `"usage"`, between `\r` and `\n`); it keeps the unfinished
//! line until its end arrives, and its answer does not depend on where the pieces were
//! cut. That property is what the `sse_usage` fuzz target checks.

use serde::Deserialize;

/// Lines longer than this are not scanned (and not kept while they arrive): a usage
/// chunk is a few hundred bytes, a content chunk that large carries no usage for us.
pub const MAX_LINE: usize = 64 * 1024;

/// Token counts an answer reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct UsageProbe {
    #[serde(default)]
    usage: Option<UsageFields>,
    /// A Responses API stream's `response.completed` event.
    #[serde(default)]
    response: Option<Nested>,
    /// An Anthropic stream's `message_start` event.
    #[serde(default)]
    message: Option<Nested>,
}

#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<UsageFields>,
}

#[derive(Deserialize)]
struct UsageFields {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<u64>,
}

impl Usage {
    /// Takes the counts of a JSON document's `usage` (top-level, or of the response or
    /// message an event carries), if it has one; a later report overrides an earlier one
    /// field by field.
    pub fn take_json(&mut self, json: &[u8]) {
        let Ok(p) = serde_json::from_slice::<UsageProbe>(json) else {
            return;
        };
        let nested = |n: Option<Nested>| n.and_then(|n| n.usage);
        if let Some(u) = p.usage.or(nested(p.response)).or(nested(p.message)) {
            self.prompt_tokens = u.prompt_tokens.or(self.prompt_tokens);
            self.completion_tokens = u.completion_tokens.or(self.completion_tokens);
        }
    }
}

/// Reads an event stream piece by piece.
#[derive(Debug, Default)]
pub struct SseUsage {
    /// The unfinished last line of what was fed so far.
    partial: Vec<u8>,
    /// The unfinished line is longer than [`MAX_LINE`]: skip to its end.
    skipping: bool,
    pub usage: Usage,
    /// `data:` lines seen, `[DONE]` not counted: what a stream without a usage report
    /// is charged per event (`admission.tokens.on_missing_usage: chunks`).
    pub events: u64,
}

impl SseUsage {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if !self.partial.is_empty() || self.skipping {
            let Some(nl) = chunk.iter().position(|&b| b == b'\n') else {
                self.keep(chunk);
                return;
            };
            self.keep(&chunk[..nl]);
            let line = std::mem::take(&mut self.partial);
            if !std::mem::take(&mut self.skipping) {
                self.line(&line);
            }
            self.partial = line;
            self.partial.clear();
            chunk = &chunk[nl + 1..];
        }
        let (complete, tail) = match chunk.iter().rposition(|&b| b == b'\n') {
            Some(i) => chunk.split_at(i + 1),
            None => (&[][..], chunk),
        };
        // Most chunks carry no usage: one pass to find out, no line splitting.
        if mentions_usage(complete) {
            for line in complete.split(|&b| b == b'\n') {
                self.line(line);
            }
        } else {
            self.events += complete
                .split(|&b| b == b'\n')
                .filter(|l| is_event(l))
                .count() as u64;
        }
        self.keep(tail);
    }

    /// The stream ended: an unfinished last line counts as a line.
    pub fn finish(&mut self) {
        let line = std::mem::take(&mut self.partial);
        if !std::mem::take(&mut self.skipping) {
            self.line(&line);
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// One line (without its `\n`): a `data:` field whose value mentions `usage`.
    fn line(&mut self, line: &[u8]) {
        if line.len() > MAX_LINE {
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if is_event(line) {
            self.events += 1;
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            return;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if mentions_usage(value) {
            self.usage.take_json(value);
        }
    }
}

/// A `data:` line other than `data: [DONE]`.
fn is_event(line: &[u8]) -> bool {
    line.strip_prefix(b"data:")
        .is_some_and(|v| v.trim_ascii() != b"[DONE]")
}

fn mentions_usage(b: &[u8]) -> bool {
    b.windows(7).any(|w| w == b"\"usage\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7}}\r\n\r\n\
data: [DONE]\n\n";

    fn whole(s: &[u8]) -> Usage {
        let mut u = SseUsage::default();
        u.feed(s);
        u.finish();
        u.usage
    }

    #[test]
    fn usage_is_found_wherever_the_stream_is_cut() {
        let want = Usage {
            prompt_tokens: Some(12),
            completion_tokens: Some(7),
        };
        assert_eq!(whole(STREAM), want);
        for cut in 0..=STREAM.len() {
            let mut u = SseUsage::default();
            u.feed(&STREAM[..cut]);
            u.feed(&STREAM[cut..]);
            u.finish();
            assert_eq!(u.usage, want, "cut at {cut}");
        }
        // One byte at a time.
        let mut u = SseUsage::default();
        STREAM.chunks(1).for_each(|c| u.feed(c));
        u.finish();
        assert_eq!(u.usage, want);
        // Two events (the content and the usage chunk), `[DONE]` not counted.
        assert_eq!(u.events, 2);
        for cut in 0..=STREAM.len() {
            let mut u = SseUsage::default();
            u.feed(&STREAM[..cut]);
            u.feed(&STREAM[cut..]);
            u.finish();
            assert_eq!(u.events, 2, "cut at {cut}");
        }
    }

    #[test]
    fn data_without_a_space_and_a_final_line_without_newline_count() {
        let u = whole(b"data:{\"usage\":{\"prompt_tokens\":3}}");
        assert_eq!(u.prompt_tokens, Some(3));
        assert_eq!(u.completion_tokens, None);
        // Only `data:` fields, not comments or other fields.
        assert_eq!(
            whole(b": {\"usage\":{\"prompt_tokens\":3}}\n"),
            Usage::default()
        );
        assert_eq!(
            whole(b"event: {\"usage\":{\"prompt_tokens\":3}}\n"),
            Usage::default()
        );
    }

    #[test]
    fn the_responses_and_anthropic_shapes_count() {
        let mut u = Usage::default();
        u.take_json(
            br#"{"id":"resp_1","usage":{"input_tokens":9,"output_tokens":4,"total_tokens":13}}"#,
        );
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(9), Some(4)));
        let anthropic = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":6}}\n\n";
        let u = whole(anthropic);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(11), Some(6)));
        let responses = b"data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":2,\"output_tokens\":3}}}\n\n";
        let u = whole(responses);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(2), Some(3)));
    }

    #[test]
    fn an_overlong_line_is_skipped_and_what_follows_is_read() {
        let mut s = b"data: \"usage\"".to_vec();
        s.extend(std::iter::repeat_n(b'x', MAX_LINE));
        s.extend_from_slice(b"\ndata: {\"usage\":{\"completion_tokens\":5}}\n");
        assert_eq!(whole(&s).completion_tokens, Some(5));
        let mut u = SseUsage::default();
        s.chunks(1000).for_each(|c| u.feed(c));
        u.finish();
        assert_eq!(u.usage.completion_tokens, Some(5));
        assert!(u.partial.capacity() <= 2 * MAX_LINE);
    }
}
