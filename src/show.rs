//! Text from outside weft's own process (etcd values, another host's record, a kernel name)
//! made safe for a person's terminal: every control character (C0, DEL, C1) and every Unicode
//! character that reorders or hides text (bidi controls, zero-width marks) is written as a
//! visible escape, so no value can move the cursor, clear the screen, set a window title or
//! forge a line. JSON for machines is never passed through here: it stays exact.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io;

/// Whether `c` must not reach a terminal as it is.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}'                  // Arabic letter mark
            | '\u{200b}'..='\u{200f}'   // zero-width space, joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}'   // line and paragraph separators
            | '\u{202a}'..='\u{202e}'   // bidi embeddings and overrides
            | '\u{2060}'..='\u{206f}'   // word joiner, invisible operators, bidi isolates
            | '\u{feff}'                // zero-width no-break space
            | '\u{fff9}'..='\u{fffb}') // interlinear annotations
}

/// `s` with every unsafe character escaped: `\n`, `\r`, `\t`, or `\u{1b}`.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Text of several lines (a stored config, a list of problems): each line escaped, the line
/// breaks kept.
pub fn escape_lines(s: &str) -> String {
    s.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// Shows a string escaped, in a format string: `format!("{}", Shown(value))`.
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// A writer for lines a person reads: each `write!`/`writeln!` is escaped whole, so a line
/// break inside a value is shown as `\n` and only the one `writeln!` ends a line. Writes
/// through [`io::Write::write`] (raw bytes) are escaped as text too.
pub struct Safe<W>(pub W);

impl<W: io::Write> io::Write for Safe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(escape(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> io::Result<()> {
        let s = fmt::format(args);
        let (body, end) = match s.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (s.as_str(), ""),
        };
        self.0.write_all(escape(body).as_bytes())?;
        self.0.write_all(end.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn controls_and_bidi_marks_become_visible() {
        let forged = "\u{1b}]0;PWNED\u{7}\u{1b}[2Jx\r\nhosts:     99 ready\u{9b}2J \u{202e}evil";
        assert_eq!(
            escape(forged),
            "\\u{1b}]0;PWNED\\u{7}\\u{1b}[2Jx\\r\\nhosts:     99 ready\\u{9b}2J \\u{202e}evil"
        );
        assert!(matches!(escape("0.1.0 vxlan ü"), Cow::Borrowed(_)));
        assert_eq!(escape_lines("a\u{1b}\nb"), "a\\u{1b}\nb");
        assert_eq!(format!("[{}]", Shown("\t")), "[\\t]");
    }

    #[test]
    fn a_safe_writer_ends_lines_only_where_writeln_does() {
        let mut w = Safe(Vec::new());
        let forged = "x\r\nhosts:     99 ready";
        writeln!(w, "backends:  {forged} (1)").unwrap();
        write!(w, "prompt? ").unwrap();
        let out = String::from_utf8(w.0).unwrap();
        assert_eq!(out, "backends:  x\\r\\nhosts:     99 ready (1)\nprompt? ");
        assert_eq!(out.lines().count(), 2);
    }
}
