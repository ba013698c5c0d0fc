//! Logging for weftd and weftctl, through `tracing`. Values in log lines often come from
//! other hosts (lease keys, backend data, status records), so in the text format every
//! message and field is escaped as [`crate::show`] escapes it: a forged value cannot reach an
//! operator's terminal as control characters or break a log line in two. The JSON format is
//! for machines and stays exact (serde_json escapes what JSON must).

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

use crate::show::escape;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    /// Text without a time stamp, for journald, which stamps every line itself.
    TextUntimed,
    Json,
}

/// Installs the subscriber writing to standard error, with `filter` (e.g. `info`,
/// `weft=debug`). Colour only on a terminal: a log file or journald would keep the escapes
/// as text.
pub fn init(filter: EnvFilter, format: Format) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        Format::Json => builder.json().init(),
        Format::TextUntimed => builder.without_time().fmt_fields(Escaped).init(),
        Format::Text => builder.fmt_fields(Escaped).init(),
    }
}

/// The text format's fields: the message, then `name=value` for each field, every one
/// escaped.
pub struct Escaped;

impl<'w> FormatFields<'w> for Escaped {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Fields {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct Fields<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{sep}{}", escape(text)),
            name => write!(self.writer, "{sep}{name}={}", escape(text)),
        };
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Quoted, as tracing's own text format shows a string field.
        let quoted = format!("{value:?}");
        match field.name() {
            "message" => self.put(field, value),
            _ => self.put(field, &quoted),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.put(field, &text);
    }
}

/// The first `named` of `items` and how many more, for one log line about many things
/// ("a, b, c and 17 more"): what happens to many peers at once is one line, never one each.
pub fn some_of<T: std::fmt::Display>(items: &[T], named: usize) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().take(named).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item}");
    }
    if items.len() > named {
        let _ = write!(out, " and {} more", items.len() - named);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_forged_value_stays_on_its_line_and_off_the_terminal() {
        let buf = Buf::default();
        let sink = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(Escaped)
            .with_writer(move || sink.clone())
            .finish();
        let forged = "x\u{1b}[2J\r\nWARN forged line\u{9b}\u{202e}";
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(key = %forged, reason = forged, created = false, "lease {forged} not programmed");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(!out.contains('\u{202e}'), "{out:?}");
        assert!(out.contains("created=false"), "{out}");
        assert!(out.contains(r"key=x\u{1b}[2J\r\nWARN forged line"), "{out}");
    }

    #[test]
    fn many_things_are_a_few_names_and_a_count() {
        let v: Vec<u32> = (1..=20).collect();
        assert_eq!(some_of(&v, 3), "1, 2, 3 and 17 more");
        assert_eq!(some_of(&v[..2], 3), "1, 2");
        assert_eq!(some_of::<u32>(&[], 3), "");
    }
}
