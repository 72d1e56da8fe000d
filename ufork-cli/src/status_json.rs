//! `ufork status --json` and the `status json` console command: the pool's
//! state as one JSON object, in a schema that only grows (documented in the
//! README, "Machine-readable status"). `schema` is bumped only if a field
//! changes meaning or goes away.
//!
//! Durations are seconds as numbers, sizes are bytes, times are seconds since
//! the Unix epoch; a value that is not known is `null`.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use ufork_core::{ExitRecord, ExitStatus, WorkerInfo};

use crate::health::View;

/// The schema version written as `"schema"`.
pub const SCHEMA: u32 = 1;

/// The JSON document for `view`, on one line with a final newline.
pub fn render(view: &View) -> String {
    let snap = &view.snapshot;
    let mut o = Object::default();
    o.num("schema", SCHEMA);
    o.num("arbiter_pid", std::process::id());
    o.num("target", snap.target);
    o.num("ready", snap.ready_count());
    o.str("health", view.health.as_str());
    o.secs("degraded_for_seconds", Some(view.short_for));
    o.bool("rolling", snap.rolling);
    o.bool("stopping", snap.stopping);
    o.secs("uptime_seconds", Some(view.uptime));
    let mut totals = Object::default();
    totals.num("spawned", snap.spawned);
    totals.num("requests", view.requests_total());
    totals.num("restarts", view.totals.restarts);
    let mut exits = Object::default();
    for (reason, count) in &view.totals.exits {
        exits.num(reason, count);
    }
    totals.raw("exits", &exits.finish());
    o.raw("totals", &totals.finish());
    let workers: Vec<String> = snap.workers.iter().map(worker).collect();
    o.raw("workers", &format!("[{}]", workers.join(",")));
    let exits: Vec<String> = snap.history.iter().map(exit).collect();
    o.raw("recent_exits", &format!("[{}]", exits.join(",")));
    let mut out = o.finish();
    out.push('\n');
    out
}

fn worker(w: &WorkerInfo) -> String {
    let mut o = Object::default();
    o.num("slot", w.slot);
    o.num("pid", w.pid);
    o.num("generation", w.generation);
    o.str("state", w.state.as_str());
    o.secs("uptime_seconds", Some(w.uptime));
    o.secs("last_beat_age_seconds", w.last_beat_age);
    o.secs("busy_seconds", w.busy_for);
    o.num("requests", w.requests);
    o.num("restarts", w.restarts);
    match w.rss {
        Some(rss) => o.num("rss_bytes", rss),
        None => o.raw("rss_bytes", "null"),
    }
    o.str("activity", &w.activity);
    o.finish()
}

fn exit(r: &ExitRecord) -> String {
    let mut o = Object::default();
    o.num("slot", r.slot);
    o.num("pid", r.pid);
    o.num("generation", r.generation);
    o.str("reason", r.reason.as_str());
    match r.status {
        ExitStatus::Code(code) => {
            o.num("exit_code", code);
            o.raw("signal", "null");
        }
        ExitStatus::Signal(signal) => {
            o.raw("exit_code", "null");
            o.str(
                "signal",
                &ufork_core::signal_name(signal).map_or_else(|| signal.to_string(), str::to_owned),
            );
        }
    }
    o.str("description", &r.to_string());
    match &r.message {
        Some(message) => o.str("message", message),
        None => o.raw("message", "null"),
    }
    o.secs("uptime_seconds", Some(r.uptime));
    o.num("requests", r.requests);
    let at = r.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    o.secs("at_unix_seconds", Some(at));
    o.finish()
}

/// A JSON object written field by field.
#[derive(Default)]
struct Object {
    text: String,
}

impl Object {
    fn key(&mut self, key: &str) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        quote(&mut self.text, key);
        self.text.push(':');
    }

    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.text.push_str(value);
    }

    fn num(&mut self, key: &str, value: impl std::fmt::Display) {
        self.key(key);
        let _ = write!(self.text, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.raw(key, if value { "true" } else { "false" });
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        quote(&mut self.text, value);
    }

    /// Seconds with millisecond precision, or `null`.
    fn secs(&mut self, key: &str, value: Option<Duration>) {
        match value {
            Some(d) => self.num(
                key,
                format_args!("{}.{:03}", d.as_secs(), d.subsec_millis()),
            ),
            None => self.raw(key, "null"),
        }
    }

    fn finish(mut self) -> String {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        self.text
    }
}

/// `text` as a JSON string: quotes, backslashes and control characters
/// escaped; everything else (UTF-8 included) as it is.
fn quote(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_for_json() {
        let mut out = String::new();
        quote(&mut out, "a\"b\\c\n\u{1b}[1m\u{7f}é");
        assert_eq!(out, r#""a\"b\\c\n\u001b[1m\u007fé""#);
    }

    #[test]
    fn objects_nest_and_keep_their_order() {
        let mut inner = Object::default();
        inner.num("n", 3);
        let mut o = Object::default();
        o.str("k", "v");
        o.raw("inner", &inner.finish());
        o.raw("empty", &Object::default().finish());
        o.secs("s", Some(Duration::from_millis(1500)));
        o.secs("none", None);
        o.bool("b", false);
        assert_eq!(
            o.finish(),
            r#"{"k":"v","inner":{"n":3},"empty":{},"s":1.500,"none":null,"b":false}"#
        );
    }
}
