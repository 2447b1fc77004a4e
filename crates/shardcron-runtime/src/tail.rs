//! Bounded output tails, shared by the executors that keep the end of what a run
//! printed or answered.

use std::collections::VecDeque;

/// The last `limit` bytes of a stream (a script's stdout or stderr, an HTTP
/// response body), and how many came before them.
#[derive(Debug)]
pub(crate) struct Tail {
    limit: usize,
    buf: VecDeque<u8>,
    dropped: u64,
}

impl Tail {
    pub(crate) fn new(limit: usize) -> Self {
        Tail {
            limit,
            buf: VecDeque::new(),
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.len() >= self.limit {
            self.dropped += (self.buf.len() + data.len() - self.limit) as u64;
            self.buf.clear();
            self.buf.extend(&data[data.len() - self.limit..]);
        } else {
            self.buf.extend(data);
            let excess = self.buf.len().saturating_sub(self.limit);
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.dropped == 0
    }

    /// The kept bytes as text, starting at a character boundary when the start was
    /// cut, after a line saying how much was dropped.
    pub(crate) fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(self.buf.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        if self.dropped == 0 {
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        // Skip the continuation bytes of a character whose start was dropped.
        let skip = bytes
            .iter()
            .take(3)
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count();
        format!(
            "[... {} earlier bytes not kept]\n{}",
            self.dropped + skip as u64,
            String::from_utf8_lossy(&bytes[skip..])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_across_pushes() {
        let mut t = Tail::new(5);
        t.push(b"abc");
        assert_eq!(t.text(), "abc");
        t.push(b"defg");
        assert_eq!(t.text(), "[... 2 earlier bytes not kept]\ncdefg");
        t.push(b"0123456789");
        assert_eq!(t.text(), "[... 12 earlier bytes not kept]\n56789");
        assert_eq!(t.buf.len(), 5);
    }

    #[test]
    fn tail_starts_at_a_character_boundary() {
        let mut t = Tail::new(3);
        // "é" is two bytes: the cut leaves the second byte of the first one.
        t.push("aéé".as_bytes());
        assert_eq!(t.text(), "[... 3 earlier bytes not kept]\né");
        let mut t = Tail::new(5);
        t.push("€€".as_bytes());
        // "€" is three bytes: two continuation bytes are skipped.
        assert_eq!(t.text(), "[... 3 earlier bytes not kept]\n€");
    }

    #[test]
    fn zero_limit_keeps_nothing_but_counts() {
        let mut t = Tail::new(0);
        t.push(b"abc");
        assert!(!t.is_empty());
        assert_eq!(t.text(), "[... 3 earlier bytes not kept]\n");
    }

    #[test]
    fn tail_keeps_the_end_at_a_character_boundary() {
        let mut t = Tail::new(5);
        t.push(b"ab");
        assert_eq!(t.text(), "ab");
        t.push(b"cdefg");
        assert_eq!(t.text(), "[... 2 earlier bytes not kept]\ncdefg");
        t.push(&[b'x'; 100]);
        assert_eq!(
            t.text(),
            format!("[... 102 earlier bytes not kept]\n{}", "x".repeat(5))
        );
        let mut t = Tail::new(3);
        t.push("a€".as_bytes()); // € is 3 bytes: 1 + 3 = 4, the first byte goes
        assert_eq!(t.text(), "[... 1 earlier bytes not kept]\n€");
        t.push(b"b"); // 2 continuation bytes of € remain: skipped
        assert_eq!(t.text(), "[... 4 earlier bytes not kept]\nb");
        assert!(Tail::new(4).is_empty());
    }
}
