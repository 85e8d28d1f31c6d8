//! A small, allocation-free parser of the Prometheus text exposition format (0.0.4).
//!
//! Why our own: the well-known crates either allocate a map per sample or panic on some
//! malformed inputs, and the router only needs `name -> value` of a dozen series per
//! scrape. Every line is still fully validated (name, labels with escapes, value,
//! optional timestamp), so a garbled page is an error for that scrape, never a panic and
//! never a silently wrong number.

use std::fmt;

/// One sample line. Labels are checked but not returned: the router sums or averages a
/// metric over all its series (data-parallel `engine` labels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// Calls `f` for every sample of `text`, in order. Comments (`# HELP`, `# TYPE`, others),
/// blank lines, CRLF line ends and a missing final newline are accepted.
pub fn for_each_sample<'a>(text: &'a str, f: impl FnMut(Sample<'a>)) -> Result<(), ParseError> {
    for_each_wanted(text, |_| true, f)
}

/// Like [`for_each_sample`], but lines whose metric name `wanted` rejects are only
/// checked for a valid name, not parsed: a real vLLM page is mostly histogram buckets the
/// router never reads, and skipping them makes a scrape several times cheaper. Non-metric
/// garbage (an HTML error page, binary) still fails on the name.
pub fn for_each_wanted<'a>(
    text: &'a str,
    wanted: impl Fn(&str) -> bool,
    mut f: impl FnMut(Sample<'a>),
) -> Result<(), ParseError> {
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |reason| ParseError {
            line: i + 1,
            reason,
        };
        let name = metric_name(trimmed).map_err(err)?;
        if !wanted(name) {
            continue;
        }
        f(parse_line(trimmed, name).map_err(err)?);
    }
    Ok(())
}

/// The metric name at the start of a sample line.
fn metric_name(line: &str) -> Result<&str, &'static str> {
    let b = line.as_bytes();
    let end = b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b':'))
        .unwrap_or(b.len());
    if end == 0 || b[0].is_ascii_digit() {
        return Err("invalid metric name");
    }
    match b.get(end) {
        None | Some(b'{' | b' ' | b'\t') => Ok(&line[..end]),
        _ => Err("invalid metric name"),
    }
}

/// Parses the rest of a sample line whose metric `name` (a prefix of `line`) is known.
fn parse_line<'a>(line: &'a str, name: &'a str) -> Result<Sample<'a>, &'static str> {
    let b = line.as_bytes();
    let mut pos = name.len();
    if b.get(pos) == Some(&b'{') {
        pos = skip_labels(b, pos + 1)?;
    }
    let rest = &line[pos..];
    if !rest.starts_with([' ', '\t']) {
        return Err("expected whitespace before the value");
    }
    let mut fields = rest.split([' ', '\t']).filter(|s| !s.is_empty());
    let value = parse_value(fields.next().ok_or("missing value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "invalid timestamp")?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp");
    }
    Ok(Sample { name, value })
}

/// Skips `name="value",...}` starting after `{`; returns the index after `}`.
fn skip_labels(b: &[u8], mut pos: usize) -> Result<usize, &'static str> {
    loop {
        while b.get(pos).is_some_and(|c| *c == b' ' || *c == b'\t') {
            pos += 1;
        }
        match b.get(pos) {
            Some(b'}') => return Ok(pos + 1),
            None => return Err("unterminated label set"),
            _ => {}
        }
        let start = pos;
        while b
            .get(pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            pos += 1;
        }
        if pos == start || b[start].is_ascii_digit() {
            return Err("invalid label name");
        }
        while b.get(pos).is_some_and(|c| *c == b' ' || *c == b'\t') {
            pos += 1;
        }
        if b.get(pos) != Some(&b'=') {
            return Err("expected '=' after label name");
        }
        pos += 1;
        while b.get(pos).is_some_and(|c| *c == b' ' || *c == b'\t') {
            pos += 1;
        }
        if b.get(pos) != Some(&b'"') {
            return Err("label value must be quoted");
        }
        pos += 1;
        loop {
            match b.get(pos) {
                None => return Err("unterminated label value"),
                Some(b'\\') => match b.get(pos + 1) {
                    Some(b'\\' | b'"' | b'n') => pos += 2,
                    _ => return Err("invalid escape in label value"),
                },
                Some(b'"') => {
                    pos += 1;
                    break;
                }
                Some(_) => pos += 1,
            }
        }
        while b.get(pos).is_some_and(|c| *c == b' ' || *c == b'\t') {
            pos += 1;
        }
        match b.get(pos) {
            Some(b',') => pos += 1,
            Some(b'}') => return Ok(pos + 1),
            _ => return Err("expected ',' or '}' after label value"),
        }
    }
}

/// Go's `ParseFloat` forms as Prometheus writes them, including `NaN` and `±Inf`.
fn parse_value(s: &str) -> Result<f64, &'static str> {
    match s {
        "NaN" | "nan" => return Ok(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => return Ok(f64::INFINITY),
        "-Inf" | "-inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust also accepts "infinity"/"nan" spelled other ways; only digits reach here.
    if !s
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return Err("invalid value");
    }
    s.parse::<f64>().map_err(|_| "invalid value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples(text: &str) -> Result<Vec<(String, f64)>, ParseError> {
        let mut v = Vec::new();
        for_each_sample(text, |s| v.push((s.name.to_string(), s.value)))?;
        Ok(v)
    }

    #[test]
    fn the_real_vllm_page_parses() {
        let text = include_str!("../../tests/fixtures/vllm_metrics_sample.txt");
        let v = samples(text).unwrap();
        assert!(v.len() > 100);
        assert!(v.iter().any(|(n, _)| n == "vllm:num_requests_running"));
    }

    #[test]
    fn format_corners() {
        let text = "# HELP x A \"help\"\r\n# TYPE x gauge\r\nx{a=\"q\\\"uo\\\\te\\n\",b=\"}\",} 1.5 1700000000000\r\n\
                    y NaN\ny2 +Inf\ny3 -Inf\n  z{} 3e2\nw 7";
        let v = samples(text).unwrap();
        assert_eq!(v[0], ("x".to_string(), 1.5));
        assert!(v[1].1.is_nan());
        assert_eq!(v[2].1, f64::INFINITY);
        assert_eq!(v[3].1, f64::NEG_INFINITY);
        assert_eq!(v[4], ("z".to_string(), 300.0));
        assert_eq!(v[5], ("w".to_string(), 7.0), "no trailing newline");
    }

    #[test]
    fn unwanted_lines_are_skipped_but_garbage_names_still_fail() {
        let mut got = Vec::new();
        for_each_wanted(
            "a{x=\"1\"} 1\nb{broken 2\nc 3\n",
            |n| n != "b",
            |s| got.push(s.value),
        )
        .unwrap();
        assert_eq!(got, [1.0, 3.0]);
        let e = for_each_wanted("<html>\n", |_| false, |_| {}).unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        for (text, line) in [
            ("ok 1\nbad{a=\"x} 1\n", 2),
            ("x{a=x} 1", 1),
            ("x 1 2 3", 1),
            ("x abc", 1),
            ("x", 1),
            ("1x 2", 1),
            ("x{a=\"\\q\"} 1", 1),
            ("x{=\"v\"} 1", 1),
            ("x infinity", 1),
            ("a 1\nb 2\nx 1 notatime", 3),
        ] {
            let e = samples(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&data);
            let _ = samples(&text);
        }

        #[test]
        fn arbitrary_metric_like_text_never_panics(text in "[a-z_:{}=\",. \\\\\n0-9#+-]{0,200}") {
            let _ = samples(&text);
        }

        #[test]
        fn well_formed_samples_round_trip(name in "[a-z_:][a-z0-9_:]{0,20}",
                                          label in "[^\"\\\\\n]{0,10}",
                                          value in -1e9f64..1e9) {
            let text = format!("{name}{{l=\"{label}\"}} {value}\n");
            let v = samples(&text).unwrap();
            prop_assert_eq!(v.len(), 1);
            prop_assert_eq!(&v[0].0, &name);
            prop_assert_eq!(v[0].1, value);
        }
    }
}
