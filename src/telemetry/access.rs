//! One access-log line per request, on stdout (the logs proper go to stderr), as logfmt
//! or JSON (`router.access_log`).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Logfmt,
    Json,
    Off,
}

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
    /// `instance: reason` of each abandoned attempt.
    pub failovers: &'a [String],
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
                let mut add = |k: &str, v: String| s.push_str(&format!(" {k}={v}"));
                if let Some(m) = self.model {
                    add("model", logfmt_value(m));
                }
                if let Some(i) = self.instance {
                    add("instance", logfmt_value(i));
                }
                if let Some(t) = self.ttfb_ms {
                    add("ttfb_ms", format!("{t:.3}"));
                }
                if let Some(t) = self.prompt_tokens {
                    add("prompt_tokens", t.to_string());
                }
                if let Some(t) = self.completion_tokens {
                    add("completion_tokens", t.to_string());
                }
                if !self.failovers.is_empty() {
                    add("failovers", logfmt_value(&self.failovers.join("; ")));
                }
                if let Some(e) = self.error {
                    add("error", logfmt_value(e));
                }
                Some(s)
            }
        }
    }

    pub fn write(&self, format: AccessLogFormat) {
        if let Some(line) = self.line(format) {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            failovers: &f,
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
        let j: serde_json::Value =
            serde_json::from_str(&r.line(AccessLogFormat::Json).unwrap()).unwrap();
        assert_eq!(j["instance"], "i1");
        assert!(r.line(AccessLogFormat::Off).is_none());
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
