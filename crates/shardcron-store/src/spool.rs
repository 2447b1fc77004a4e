//! The local spool: an append-only file of history events that could not (yet)
//! be written to the database, replayed in order when it is back.
//!
//! Files in the spool directory (`<data dir>/history-spool` by default):
//! - `LOCK`: held with an exclusive advisory lock while a writer has the spool
//!   open, so two processes never append to one spool;
//! - `history.spool`: records `[len u32 LE][crc32 u32 LE][payload]`, payload =
//!   `[seq u64 LE][spooled_at µs i64 LE][event as JSON]`. A record is whole or
//!   not there: opening the spool cuts a torn last record (a crash mid-append)
//!   and keeps everything before it. A bad record *followed* by more data is
//!   corruption, not a tear: the rest of the file is moved aside to
//!   `history.spool.corrupt-<µs>` for a human, never silently dropped;
//! - `history.spool.pos`: how far replay has got (`[offset u64][crc32]`). It is an
//!   optimisation only: if it is missing or stale, replay starts earlier and
//!   writes some events twice, which the database's idempotent upserts absorb;
//! - `history.rejected`: events the database refused for good (a data error, not
//!   an outage), one JSON object per line with the error; kept for a human.
//!
//! When everything has been replayed the file is truncated to zero. While the
//! database stays behind, a spool whose replayed prefix passes 64 MiB is
//! compacted (the unreplayed tail copied to a new file, renamed over the old).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::event::HistoryEvent;
use crate::{Result, StoreError};

const SPOOL: &str = "history.spool";
const POS: &str = "history.spool.pos";
const TMP: &str = "history.spool.tmp";
const REJECTED: &str = "history.rejected";
const HEADER: usize = 8;
const PAYLOAD_PREFIX: usize = 16;
const MAX_RECORD: usize = 64 << 20;
const COMPACT_AFTER: u64 = 64 << 20;

fn spool_err(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Spool {
        path: path.display().to_string(),
        cause: format!("{what}: {e}"),
    }
}

/// Append the framed record of one event to `buf`.
pub(crate) fn encode(seq: u64, spooled_at: i64, event: &HistoryEvent, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&spooled_at.to_le_bytes());
    // Serializing plain data to a Vec cannot fail; if it ever did, the record
    // would be written without its event and be refused on replay as corrupt,
    // which is loud rather than silent.
    if let Err(e) = serde_json::to_writer(&mut *buf, event) {
        tracing::error!("cannot encode history event for the spool: {e}");
    }
    let payload_len = (buf.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One record read back.
#[derive(Debug)]
pub(crate) struct SpooledEvent {
    pub(crate) seq: u64,
    pub(crate) spooled_at: i64,
    pub(crate) event: HistoryEvent,
}

/// What reading one record at a position found.
enum Next {
    Record(Box<SpooledEvent>, u64),
    /// A whole record whose checksum or content is wrong.
    Corrupt,
    /// Not enough bytes for a whole record.
    Torn,
    End,
}

fn read_record(r: &mut impl Read, remaining: u64) -> std::io::Result<Next> {
    if remaining == 0 {
        return Ok(Next::End);
    }
    if remaining < HEADER as u64 {
        return Ok(Next::Torn);
    }
    let mut header = [0u8; HEADER];
    r.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(PAYLOAD_PREFIX..=MAX_RECORD).contains(&len) {
        // A length no writer produces. The header is written in one piece with
        // its payload, so a tear cannot produce it: this is damage.
        return Ok(Next::Corrupt);
    }
    if (HEADER + len) as u64 > remaining {
        return Ok(Next::Torn);
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Ok(Next::Corrupt);
    }
    let seq = u64::from_le_bytes(payload[0..8].try_into().unwrap_or([0; 8]));
    let spooled_at = i64::from_le_bytes(payload[8..16].try_into().unwrap_or([0; 8]));
    match serde_json::from_slice::<HistoryEvent>(&payload[PAYLOAD_PREFIX..]) {
        Ok(event) => Ok(Next::Record(
            Box::new(SpooledEvent {
                seq,
                spooled_at,
                event,
            }),
            (HEADER + len) as u64,
        )),
        Err(_) => Ok(Next::Corrupt),
    }
}

/// A batch read from the spool, not yet acknowledged.
#[derive(Debug)]
pub(crate) struct SpoolBatch {
    pub(crate) events: Vec<SpooledEvent>,
    /// Offset just after the batch's last record.
    pub(crate) end: u64,
}

/// An open spool directory.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    _lock: File,
    /// Bytes of whole records in the file.
    len: u64,
    /// First byte not yet replayed.
    cursor: u64,
    /// Records after the cursor.
    pending: u64,
    /// Spool time of the record at the cursor.
    oldest: Option<i64>,
    /// Highest sequence number ever written to this spool.
    pub(crate) max_seq: u64,
    /// Bytes of torn tail cut off when the spool was opened.
    pub(crate) torn_bytes: u64,
    /// Bytes moved aside as corrupt when the spool was opened.
    pub(crate) corrupt_bytes: u64,
    /// Events appended to `history.rejected` since opening.
    pub(crate) rejected: u64,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| spool_err(dir, "cannot sync directory", e))
}

impl Spool {
    /// Open (creating if needed) the spool in `dir`, lock it and recover it.
    pub(crate) fn open(dir: &Path) -> Result<Spool> {
        fs::create_dir_all(dir).map_err(|e| spool_err(dir, "cannot create spool directory", e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| spool_err(&lock_path, "cannot open", e))?;
        lock.try_lock().map_err(|e| {
            spool_err(
                &lock_path,
                "spool is in use by another shardcron process (lock held)",
                e,
            )
        })?;
        let path = dir.join(SPOOL);
        // A compaction that crashed before its rename leaves a partial copy.
        let _ = fs::remove_file(dir.join(TMP));
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| spool_err(&path, "cannot open", e))?;
        let size = file
            .metadata()
            .map_err(|e| spool_err(&path, "cannot stat", e))?
            .len();
        let saved_cursor = read_pos(&dir.join(POS));

        // Scan every record: find the end of the intact prefix, the record
        // boundaries (to validate the saved cursor) and the highest sequence.
        let mut reader = BufReader::with_capacity(
            1 << 20,
            File::open(&path).map_err(|e| spool_err(&path, "cannot open", e))?,
        );
        let mut pos = 0u64;
        let mut max_seq = 0u64;
        let mut cursor_ok = saved_cursor == 0;
        let mut bad_tail = false;
        loop {
            if pos == saved_cursor {
                cursor_ok = true;
            }
            match read_record(&mut reader, size - pos)
                .map_err(|e| spool_err(&path, "cannot read", e))?
            {
                Next::Record(ev, n) => {
                    max_seq = max_seq.max(ev.seq);
                    pos += n;
                }
                Next::End => break,
                Next::Torn => break,
                Next::Corrupt => {
                    bad_tail = true;
                    break;
                }
            }
        }
        let good = pos;
        let mut torn_bytes = 0;
        let mut corrupt_bytes = 0;
        if good < size {
            if bad_tail {
                // Keep the bytes after the corruption for a human to look at.
                let aside = dir.join(format!(
                    "{SPOOL}.corrupt-{}",
                    chrono::Utc::now().timestamp_micros()
                ));
                let mut src = File::open(&path).map_err(|e| spool_err(&path, "cannot open", e))?;
                std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(good))
                    .map_err(|e| spool_err(&path, "cannot seek", e))?;
                let mut out =
                    File::create(&aside).map_err(|e| spool_err(&aside, "cannot create", e))?;
                std::io::copy(&mut src, &mut out)
                    .and_then(|_| out.sync_all())
                    .map_err(|e| spool_err(&aside, "cannot write", e))?;
                corrupt_bytes = size - good;
                tracing::error!(
                    spool = %path.display(),
                    moved_to = %aside.display(),
                    bytes = corrupt_bytes,
                    "history spool has a corrupt record; the records after it were moved aside"
                );
            } else {
                torn_bytes = size - good;
                tracing::warn!(
                    spool = %path.display(),
                    bytes = torn_bytes,
                    "history spool ended in a torn record (a crash mid-append); cut it off"
                );
            }
            file.set_len(good)
                .and_then(|()| file.sync_all())
                .map_err(|e| spool_err(&path, "cannot truncate", e))?;
        }
        let cursor = if cursor_ok && saved_cursor <= good {
            saved_cursor
        } else {
            0
        };
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            path,
            file,
            _lock: lock,
            len: good,
            cursor,
            pending: 0,
            oldest: None,
            max_seq,
            torn_bytes,
            corrupt_bytes,
            rejected: 0,
        };
        spool.recount()?;
        Ok(spool)
    }

    /// Count the records after the cursor and note the oldest one's time.
    fn recount(&mut self) -> Result<()> {
        let mut reader = self.reader_at(self.cursor)?;
        let mut pos = self.cursor;
        let mut n = 0;
        self.oldest = None;
        while let Next::Record(ev, len) = read_record(&mut reader, self.len - pos)
            .map_err(|e| spool_err(&self.path, "cannot read", e))?
        {
            if n == 0 {
                self.oldest = Some(ev.spooled_at);
            }
            n += 1;
            pos += len;
        }
        self.pending = n;
        Ok(())
    }

    fn reader_at(&self, offset: u64) -> Result<BufReader<File>> {
        let mut f = File::open(&self.path).map_err(|e| spool_err(&self.path, "cannot open", e))?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))
            .map_err(|e| spool_err(&self.path, "cannot seek", e))?;
        Ok(BufReader::with_capacity(256 << 10, f))
    }

    /// Whether every spooled event has been replayed.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Events waiting for replay.
    pub(crate) fn pending(&self) -> u64 {
        self.pending
    }

    /// Bytes of the spool file (replayed prefix included until it is truncated).
    pub(crate) fn bytes(&self) -> u64 {
        self.len
    }

    /// Spool time (µs) of the oldest event waiting.
    pub(crate) fn oldest(&self) -> Option<i64> {
        self.oldest
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append already-encoded records (`count` of them, the first spooled at
    /// `first_at`). Not synced: call [`Spool::sync`] when it must survive a
    /// machine crash (a process crash loses nothing once `write` returned).
    pub(crate) fn append(&mut self, bytes: &[u8], count: u64, first_at: i64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(bytes) {
            // A partial write leaves a torn record; cut it so that later appends
            // do not land behind garbage.
            let _ = self.file.set_len(self.len);
            return Err(spool_err(&self.path, "cannot append", e));
        }
        self.len += bytes.len() as u64;
        if self.pending == 0 {
            self.oldest = Some(first_at);
        }
        self.pending += count;
        Ok(())
    }

    /// Make appended records durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| spool_err(&self.path, "cannot sync", e))
    }

    /// Read up to `max` events from the replay position (without consuming them).
    pub(crate) fn read_batch(&self, max: usize) -> Result<SpoolBatch> {
        let mut reader = self.reader_at(self.cursor)?;
        let mut pos = self.cursor;
        let mut events = Vec::new();
        while events.len() < max {
            match read_record(&mut reader, self.len - pos)
                .map_err(|e| spool_err(&self.path, "cannot read", e))?
            {
                Next::Record(ev, n) => {
                    events.push(*ev);
                    pos += n;
                }
                Next::End => break,
                // Appends are whole and the file was verified when opened, so
                // this means the file changed under us: stop and say so.
                Next::Torn | Next::Corrupt => {
                    return Err(spool_err(
                        &self.path,
                        "cannot replay",
                        format!("unreadable record at offset {pos}"),
                    ));
                }
            }
        }
        Ok(SpoolBatch { events, end: pos })
    }

    /// Mark everything before `end` (the end of a batch from
    /// [`Spool::read_batch`], holding `count` events) as written to the database.
    pub(crate) fn consume(&mut self, end: u64, count: u64) -> Result<()> {
        if end <= self.cursor {
            return Ok(());
        }
        self.cursor = end.min(self.len);
        self.pending = self.pending.saturating_sub(count);
        if self.cursor == self.len {
            // All replayed: start over with an empty file. The position file goes
            // first: a crash in between replays from 0 of whatever is left.
            remove_if_exists(&self.dir.join(POS))?;
            self.file
                .set_len(0)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| spool_err(&self.path, "cannot truncate", e))?;
            self.len = 0;
            self.cursor = 0;
            self.pending = 0;
            self.oldest = None;
            return Ok(());
        }
        write_pos(&self.dir.join(POS), self.cursor)?;
        let mut reader = self.reader_at(self.cursor)?;
        self.oldest = match read_record(&mut reader, self.len - self.cursor)
            .map_err(|e| spool_err(&self.path, "cannot read", e))?
        {
            Next::Record(ev, _) => Some(ev.spooled_at),
            _ => None,
        };
        if self.cursor >= COMPACT_AFTER && self.cursor >= self.len / 2 {
            self.compact()?;
        }
        Ok(())
    }

    /// Copy the unreplayed tail to a new file and rename it over the spool.
    fn compact(&mut self) -> Result<()> {
        let tmp = self.dir.join(TMP);
        let mut src = self.reader_at(self.cursor)?;
        let mut out = File::create(&tmp).map_err(|e| spool_err(&tmp, "cannot create", e))?;
        std::io::copy(&mut src, &mut out)
            .and_then(|_| out.sync_all())
            .map_err(|e| spool_err(&tmp, "cannot write", e))?;
        // Position first: a crash after it and before the rename replays the old
        // file from 0 (duplicates, harmless); after the rename, the new file from 0.
        remove_if_exists(&self.dir.join(POS))?;
        fs::rename(&tmp, &self.path).map_err(|e| spool_err(&self.path, "cannot rename", e))?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| spool_err(&self.path, "cannot reopen", e))?;
        self.len -= self.cursor;
        self.cursor = 0;
        Ok(())
    }

    /// Keep an event the database refused for good, with the reason.
    pub(crate) fn reject(&mut self, event: &HistoryEvent, error: &str) -> Result<()> {
        let path = self.dir.join(REJECTED);
        let line = serde_json::json!({ "error": error, "event": event });
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| spool_err(&path, "cannot open", e))?;
        writeln!(f, "{line}")
            .and_then(|()| f.sync_data())
            .map_err(|e| spool_err(&path, "cannot append", e))?;
        self.rejected += 1;
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(spool_err(path, "cannot remove", e)),
    }
}

fn read_pos(path: &Path) -> u64 {
    let Ok(data) = fs::read(path) else { return 0 };
    if data.len() != 12 {
        return 0;
    }
    let (off, crc) = data.split_at(8);
    if crc32fast::hash(off).to_le_bytes() != crc {
        return 0;
    }
    u64::from_le_bytes(off.try_into().unwrap_or([0; 8]))
}

fn write_pos(path: &Path, offset: u64) -> Result<()> {
    let off = offset.to_le_bytes();
    let mut data = off.to_vec();
    data.extend_from_slice(&crc32fast::hash(&off).to_le_bytes());
    fs::write(path, data).map_err(|e| spool_err(path, "cannot write", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ExecutionUpdate;
    use chrono::DateTime;
    use shardcron_core::ExecutionStatus;

    fn ev(i: u64) -> HistoryEvent {
        HistoryEvent::Update(ExecutionUpdate::finished(
            format!("e{i}"),
            ExecutionStatus::Succeeded,
            DateTime::from_timestamp(1_800_000_000 + i as i64, 0).expect("time"),
        ))
    }

    fn append(s: &mut Spool, range: std::ops::Range<u64>) {
        let mut buf = Vec::new();
        for i in range.clone() {
            encode(i, 1000 + i as i64, &ev(i), &mut buf);
        }
        s.append(&buf, range.end - range.start, 1000 + range.start as i64)
            .expect("append");
    }

    fn ids(b: &SpoolBatch) -> Vec<u64> {
        b.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn append_read_consume_and_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Spool::open(dir.path()).expect("open");
            append(&mut s, 1..6);
            assert_eq!(s.pending(), 5);
            assert_eq!(s.oldest(), Some(1001));
            let b = s.read_batch(2).expect("read");
            assert_eq!(ids(&b), vec![1, 2]);
            s.consume(b.end, 2).expect("consume");
            assert_eq!(s.pending(), 3);
            assert_eq!(s.oldest(), Some(1003));
            assert_eq!(s.read_batch(2).map(|b| ids(&b)).ok(), Some(vec![3, 4]));
        }
        let mut s = Spool::open(dir.path()).expect("reopen");
        assert_eq!(s.pending(), 3, "the saved position is used");
        assert_eq!(s.max_seq, 5);
        let b = s.read_batch(10).expect("read");
        assert_eq!(ids(&b), vec![3, 4, 5]);
        s.consume(b.end, 3).expect("consume");
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0, "fully replayed spool is truncated");
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _s = Spool::open(dir.path()).expect("open");
        let err = Spool::open(dir.path()).expect_err("locked");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn every_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Spool::open(dir.path()).expect("open");
            append(&mut s, 1..4);
        }
        let path = dir.path().join(SPOOL);
        let whole = fs::read(&path).expect("read");
        let mut one = Vec::new();
        encode(1, 1001, &ev(1), &mut one);
        let mut two = one.clone();
        encode(2, 1002, &ev(2), &mut two);
        for cut in two.len() + 1..whole.len() {
            fs::write(&path, &whole[..cut]).expect("tear");
            let _ = fs::remove_file(dir.path().join(POS));
            let s = Spool::open(dir.path()).expect("open torn");
            assert_eq!(s.pending(), 2, "cut at {cut}");
            assert_eq!(s.torn_bytes, (cut - two.len()) as u64);
            assert_eq!(s.corrupt_bytes, 0);
        }
    }

    #[test]
    fn corruption_before_the_end_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Spool::open(dir.path()).expect("open");
            append(&mut s, 1..4);
        }
        let path = dir.path().join(SPOOL);
        let mut data = fs::read(&path).expect("read");
        let mut one = Vec::new();
        encode(1, 1001, &ev(1), &mut one);
        data[one.len() + HEADER + 20] ^= 0x55; // inside record 2's payload
        fs::write(&path, &data).expect("corrupt");
        let s = Spool::open(dir.path()).expect("open");
        assert_eq!(s.pending(), 1);
        assert!(s.corrupt_bytes > 0);
        let aside: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn a_stale_position_replays_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Spool::open(dir.path()).expect("open");
            append(&mut s, 1..4);
        }
        write_pos(&dir.path().join(POS), 5).expect("bogus pos");
        let s = Spool::open(dir.path()).expect("open");
        assert_eq!(s.pending(), 3);
    }
}
