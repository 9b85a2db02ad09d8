//! A worker's output, copied to the supervisor's stderr (each line with the instance's
//! prefix) or to its log file, in bounded chunks: whatever the worker writes (a line of
//! a gigabyte, bytes that are not UTF-8), the copy costs the supervisor a fixed amount of
//! memory, and it never stops before the worker's output ends.

use std::io::{Read, Write};

/// Bytes read from the worker at a time.
const CHUNK: usize = 64 << 10;
/// The longest line kept whole for the prefix: a longer one is written in pieces of this
/// size, each on a line of its own.
pub const MAX_LINE: usize = 16 << 10;

/// Turns a worker's bytes into what is written: valid UTF-8 (what is not becomes U+FFFD;
/// a character cut between two reads is kept whole), and with a `prefix` each line
/// starts with it.
pub struct Copier {
    prefix: Option<String>,
    /// The end of the last read that may be the start of a character.
    carry: Vec<u8>,
    /// With a prefix: the line under way (at most [`MAX_LINE`] bytes).
    line: String,
}

impl Copier {
    /// A copy to a log file (`None`) or to a shared stream, each line after `prefix`.
    pub fn new(prefix: Option<String>) -> Copier {
        Copier {
            prefix,
            carry: Vec::new(),
            line: String::new(),
        }
    }

    /// Copies `bytes` (what the worker wrote next) to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut impl Write) -> std::io::Result<()> {
        self.carry.extend_from_slice(bytes);
        // The valid prefix, and what follows it: an invalid sequence (replaced) or a
        // character not complete yet (kept for the next read).
        let mut text = String::new();
        let mut rest: &[u8] = &self.carry;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // SAFETY: from_utf8 checked these bytes.
                    text.push_str(unsafe { std::str::from_utf8_unchecked(good) });
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{fffd}');
                            rest = &bad[n..];
                        }
                        None => {
                            rest = bad; // an incomplete character at the end
                            break;
                        }
                    }
                }
            }
        }
        self.carry = rest.to_vec();
        self.write(&text, out)
    }

    /// The worker's output ended: what is left is written.
    pub fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if !self.carry.is_empty() {
            self.carry.clear();
            self.write("\u{fffd}", out)?;
        }
        if self.prefix.is_some() && !self.line.is_empty() {
            self.write("\n", out)?;
        }
        Ok(())
    }

    fn write(&mut self, text: &str, out: &mut impl Write) -> std::io::Result<()> {
        let Some(prefix) = &self.prefix else {
            return out.write_all(text.as_bytes());
        };
        for piece in text.split_inclusive('\n') {
            let (content, ended) = match piece.strip_suffix('\n') {
                Some(c) => (c, true),
                None => (piece, false),
            };
            let mut content = content;
            while self.line.len() + content.len() > MAX_LINE {
                let mut room = MAX_LINE - self.line.len();
                while !content.is_char_boundary(room) {
                    room -= 1;
                }
                self.line.push_str(&content[..room]);
                content = &content[room..];
                writeln!(out, "{prefix}{}", self.line)?;
                self.line.clear();
            }
            self.line.push_str(content);
            if ended {
                writeln!(out, "{prefix}{}", self.line)?;
                self.line.clear();
            }
        }
        Ok(())
    }
}

/// Copies all of `input` through a [`Copier`] to `out`, 64 KiB at a time, until
/// the worker's output ends. A failed write does not stop the reading: the worker must
/// never be left writing to a pipe that nobody reads.
pub fn copy(input: &mut impl Read, mut copier: Copier, out: &mut impl Write) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = copier.feed(&buf[..n], out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = copier.finish(out);
}

/// Where a copy goes that also keeps each of its lines in the model's recent output
/// ([`crate::core::recent`]): every byte to `out`, each line (without the copier's
/// `prefix`, at most [`MAX_LINE`] bytes of it) to the ring as instance `instance`'s.
pub struct Tee<W> {
    pub out: W,
    pub recent: std::sync::Arc<crate::core::recent::Recent>,
    pub instance: u32,
    pub prefix: Option<String>,
    line: Vec<u8>,
}

impl<W> Tee<W> {
    pub fn new(
        out: W,
        recent: std::sync::Arc<crate::core::recent::Recent>,
        instance: u32,
        prefix: Option<String>,
    ) -> Tee<W> {
        Tee {
            out,
            recent,
            instance,
            prefix,
            line: Vec::new(),
        }
    }
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = MAX_LINE + self.prefix.as_ref().map_or(0, String::len);
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line);
                let text = match &self.prefix {
                    Some(p) => line.strip_prefix(p.as_str()).unwrap_or(&line),
                    None => &line,
                };
                self.recent.push(self.instance, text.to_owned());
                self.line.clear();
            } else if self.line.len() < room {
                self.line.push(b);
            }
        }
        // The ring has it whatever becomes of the copy's own destination.
        self.out.write_all(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tee_keeps_each_line_without_its_prefix() {
        let recent = std::sync::Arc::new(crate::core::recent::Recent::default());
        let mut tee = Tee::new(Vec::new(), recent.clone(), 3, Some("[m/3] ".into()));
        let mut c = Copier::new(Some("[m/3] ".into()));
        c.feed(b"one\ntw", &mut tee).unwrap();
        c.feed(b"o\n", &mut tee).unwrap();
        assert_eq!(
            String::from_utf8(tee.out.clone()).unwrap(),
            "[m/3] one\n[m/3] two\n"
        );
        assert_eq!(
            recent.since(0, None).0,
            [(3, "one".to_owned()), (3, "two".to_owned())]
        );
    }

    fn copied(prefix: Option<&str>, reads: &[&[u8]]) -> String {
        let mut out = Vec::new();
        let mut c = Copier::new(prefix.map(str::to_owned));
        for r in reads {
            c.feed(r, &mut out).unwrap();
        }
        c.finish(&mut out).unwrap();
        String::from_utf8(out).expect("always UTF-8")
    }

    #[test]
    fn lines_get_the_prefix_however_the_reads_cut_them() {
        let p = Some("[m/0] ");
        assert_eq!(
            copied(p, &[b"one\ntw", b"o\n", b"three"]),
            "[m/0] one\n[m/0] two\n[m/0] three\n"
        );
        assert_eq!(
            copied(None, &[b"one\ntw", b"o\n", b"three"]),
            "one\ntwo\nthree"
        );
    }

    #[test]
    fn what_is_not_utf8_is_replaced_and_a_character_cut_between_reads_is_kept() {
        assert_eq!(copied(None, &[b"a\xffb\n"]), "a\u{fffd}b\n");
        // "é" is c3 a9: cut between two reads, it comes out whole.
        assert_eq!(copied(None, &[b"caf\xc3", b"\xa9\n"]), "café\n");
        // Cut and never completed: replaced at the end.
        assert_eq!(copied(None, &[b"caf\xc3"]), "caf\u{fffd}");
    }

    #[test]
    fn a_long_line_is_written_in_pieces_and_nothing_grows_past_the_limit() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut out = Vec::new();
        let mut c = Copier::new(Some("> ".into()));
        for chunk in long.chunks(1000) {
            c.feed(chunk, &mut out).unwrap();
            assert!(c.line.len() <= MAX_LINE && c.carry.len() < 4);
        }
        c.finish(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), 2 + MAX_LINE);
        assert_eq!(lines[2], format!("> {}", "x".repeat(10)));
    }
}
