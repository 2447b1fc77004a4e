//! Persistence of the embedded registry: a snapshot plus a write-ahead log.
//!
//! Files in the data dir:
//! - `LOCK`: held with an exclusive advisory lock while a registry has the dir open,
//!   so two processes never write the same log.
//! - `snapshot`: every pair that is not lease-bound at one revision, with a CRC32.
//!   Written to `snapshot.tmp`, synced, then renamed over the old one.
//! - `wal`: one record per committed revision since the snapshot: `[len u32]
//!   [crc32 u32][payload]`. A record is acknowledged only after it is synced, so a
//!   crash can tear at most records nobody was told about; recovery stops at the
//!   first torn or corrupt record and truncates the log there.
//!
//! Lease-bound keys are not persisted (their leases do not survive a restart), but
//! every revision is logged, including those that only touched lease-bound keys, so
//! the revision counter, and with it every fencing token, never goes backwards.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::store::{Committed, Mutation};
use crate::{KeyValue, RegistryError, Result, Revision};

const SNAPSHOT_MAGIC: &[u8; 8] = b"SCSNAP01";
const MAX_RECORD: usize = 1 << 30;

fn storage(what: &str, path: &Path, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(format!("{what} {}: {e}", path.display()))
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

/// Append the framed record of `c` to `buf`.
pub(crate) fn encode_record(c: &Committed, buf: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(64);
    payload.extend_from_slice(&c.revision.to_le_bytes());
    payload.extend_from_slice(&(c.mutations.len() as u32).to_le_bytes());
    for m in &c.mutations {
        match m {
            Mutation::Put(kv) => {
                payload.push(1);
                put_bytes(&mut payload, &kv.key);
                put_bytes(&mut payload, &kv.value);
                payload.extend_from_slice(&kv.create_revision.to_le_bytes());
                payload.extend_from_slice(&kv.version.to_le_bytes());
            }
            Mutation::Delete(key) => {
                payload.push(2);
                put_bytes(&mut payload, key);
            }
        }
    }
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
}

/// A cursor over a byte slice that fails instead of panicking on short input.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_le_bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
}

fn decode_payload(payload: &[u8]) -> Option<Committed> {
    let mut r = Reader { buf: payload };
    let revision = r.i64()?;
    let n = r.u32()?;
    let mut mutations = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        match r.u8()? {
            1 => {
                let key = r.bytes()?;
                let value = r.bytes()?;
                let create_revision = r.i64()?;
                let version = r.i64()?;
                mutations.push(Mutation::Put(KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: revision,
                    version,
                    lease: 0,
                }));
            }
            2 => mutations.push(Mutation::Delete(r.bytes()?)),
            _ => return None,
        }
    }
    r.buf.is_empty().then_some(Committed {
        revision,
        mutations,
    })
}

/// Decode every whole, intact record of a log; returns them and the length of the
/// intact prefix (where a torn or corrupt tail starts).
pub(crate) fn decode_log(data: &[u8]) -> (Vec<Committed>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let mut r = Reader { buf: &data[pos..] };
        let (Some(len), Some(crc)) = (r.u32(), r.u32()) else {
            break;
        };
        let len = len as usize;
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = r.take(len) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(c) = decode_payload(payload) else {
            break;
        };
        out.push(c);
        pos += 8 + len;
    }
    (out, pos)
}

fn encode_snapshot<'a>(revision: Revision, pairs: impl Iterator<Item = &'a KeyValue>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4096);
    buf.extend_from_slice(SNAPSHOT_MAGIC);
    buf.extend_from_slice(&revision.to_le_bytes());
    let count_at = buf.len();
    buf.extend_from_slice(&0u64.to_le_bytes());
    let mut count = 0u64;
    for kv in pairs {
        put_bytes(&mut buf, &kv.key);
        put_bytes(&mut buf, &kv.value);
        buf.extend_from_slice(&kv.create_revision.to_le_bytes());
        buf.extend_from_slice(&kv.mod_revision.to_le_bytes());
        buf.extend_from_slice(&kv.version.to_le_bytes());
        count += 1;
    }
    buf[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

fn decode_snapshot(data: &[u8]) -> Option<Committed> {
    if data.len() < SNAPSHOT_MAGIC.len() + 20 || &data[..8] != SNAPSHOT_MAGIC {
        return None;
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut r = Reader { buf: &body[8..] };
    let revision = r.i64()?;
    let count = r.i64()?;
    let mut mutations = Vec::new();
    for _ in 0..count {
        let key = r.bytes()?;
        let value = r.bytes()?;
        mutations.push(Mutation::Put(KeyValue {
            key,
            value,
            create_revision: r.i64()?,
            mod_revision: r.i64()?,
            version: r.i64()?,
            lease: 0,
        }));
    }
    r.buf.is_empty().then_some(Committed {
        revision,
        mutations,
    })
}

/// The open log of a data dir.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    /// `None` while a blocking write owns it, or after a failed write.
    file: Option<File>,
    _lock: File,
    size: u64,
    /// Highest revision known to be on disk.
    pub(crate) durable: Revision,
    sync: bool,
    snapshot_threshold: u64,
}

/// What recovery found in a data dir.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The snapshot (if any), then the log records after it, in order.
    pub(crate) commits: Vec<Committed>,
    /// Bytes of torn or corrupt tail that were cut off the log.
    pub(crate) truncated_bytes: u64,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage("cannot sync directory", dir, e))
}

impl Wal {
    /// Open (creating if needed) the data dir, lock it and recover its contents.
    pub(crate) fn open(
        dir: &Path,
        sync: bool,
        snapshot_threshold: u64,
    ) -> Result<(Wal, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| storage("cannot create data dir", dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| storage("cannot open", &lock_path, e))?;
        lock.try_lock().map_err(|e| {
            storage(
                "data dir is in use by another shardcron process (lock held on",
                &lock_path,
                format!("{e})"),
            )
        })?;

        let mut commits = Vec::new();
        let snap_path = dir.join("snapshot");
        let mut snap_rev = 0;
        match fs::read(&snap_path) {
            Ok(data) => {
                let snap = decode_snapshot(&data).ok_or_else(|| {
                    storage(
                        "snapshot is corrupt; refusing to start with possibly lost keys:",
                        &snap_path,
                        "checksum or format mismatch",
                    )
                })?;
                snap_rev = snap.revision;
                commits.push(snap);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(storage("cannot read", &snap_path, e)),
        }

        let wal_path = dir.join("wal");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&wal_path)
            .map_err(|e| storage("cannot open", &wal_path, e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| storage("cannot read", &wal_path, e))?;
        let (records, good) = decode_log(&data);
        let truncated_bytes = (data.len() - good) as u64;
        if truncated_bytes > 0 {
            file.set_len(good as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| storage("cannot truncate torn tail of", &wal_path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| storage("cannot seek", &wal_path, e))?;
        let mut durable = snap_rev;
        for c in records {
            // Records at or below the snapshot were folded into it (a crash between
            // the snapshot's rename and the log's truncation leaves them behind).
            if c.revision > snap_rev {
                durable = durable.max(c.revision);
                commits.push(c);
            }
        }
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                file: Some(file),
                _lock: lock,
                size: good as u64,
                durable,
                sync,
                snapshot_threshold,
            },
            Recovered {
                commits,
                truncated_bytes,
            },
        ))
    }

    /// Append `bytes` (whole records up to revision `upto`) and sync them.
    pub(crate) async fn append(&mut self, bytes: Vec<u8>, upto: Revision) -> Result<()> {
        if bytes.is_empty() {
            self.durable = self.durable.max(upto);
            return Ok(());
        }
        let mut file = self.file.take().ok_or_else(|| {
            RegistryError::Storage("write-ahead log is unusable after an earlier error".into())
        })?;
        let sync = self.sync;
        let path = self.dir.join("wal");
        let len = bytes.len() as u64;
        let (file, res) = tokio::task::spawn_blocking(move || {
            let res = file
                .write_all(&bytes)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
            (file, res)
        })
        .await
        .map_err(|e| RegistryError::Storage(format!("write-ahead log writer failed: {e}")))?;
        res.map_err(|e| storage("cannot append to", &path, e))?;
        self.file = Some(file);
        self.size += len;
        self.durable = self.durable.max(upto);
        Ok(())
    }

    /// Append synchronously (used on drop, where no runtime may be available).
    pub(crate) fn append_blocking(&mut self, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join("wal");
        let file = self.file.as_mut().ok_or_else(|| {
            RegistryError::Storage("write-ahead log is unusable after an earlier error".into())
        })?;
        file.write_all(bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| storage("cannot append to", &path, e))
    }

    /// Whether the log has grown enough to be folded into a new snapshot.
    pub(crate) fn wants_snapshot(&self) -> bool {
        self.size >= self.snapshot_threshold
    }

    /// Write a snapshot of `pairs` at `revision` and empty the log.
    pub(crate) fn snapshot<'a>(
        &mut self,
        revision: Revision,
        pairs: impl Iterator<Item = &'a KeyValue>,
    ) -> Result<()> {
        let data = encode_snapshot(revision, pairs);
        let tmp = self.dir.join("snapshot.tmp");
        let path = self.dir.join("snapshot");
        let mut f = File::create(&tmp).map_err(|e| storage("cannot create", &tmp, e))?;
        f.write_all(&data)
            .and_then(|()| f.sync_all())
            .map_err(|e| storage("cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| storage("cannot rename snapshot to", &path, e))?;
        sync_dir(&self.dir)?;
        let wal_path = self.dir.join("wal");
        let file = self.file.as_mut().ok_or_else(|| {
            RegistryError::Storage("write-ahead log is unusable after an earlier error".into())
        })?;
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| file.sync_all())
            .map_err(|e| storage("cannot truncate", &wal_path, e))?;
        self.size = 0;
        self.durable = self.durable.max(revision);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_cut() {
        let a = Committed {
            revision: 7,
            mutations: vec![
                Mutation::Put(kv("a", "1", 7)),
                Mutation::Delete(b"b".to_vec()),
            ],
        };
        let b = Committed {
            revision: 8,
            mutations: vec![],
        };
        let mut buf = Vec::new();
        encode_record(&a, &mut buf);
        encode_record(&b, &mut buf);
        let whole = buf.len();
        let (got, good) = decode_log(&buf);
        assert_eq!(got, vec![a.clone(), b.clone()]);
        assert_eq!(good, whole);
        // Every proper prefix of the second record is torn: only the first survives.
        let first_len = {
            let mut one = Vec::new();
            encode_record(&a, &mut one);
            one.len()
        };
        for cut in first_len..whole {
            let (got, good) = decode_log(&buf[..cut]);
            assert_eq!(got, vec![a.clone()], "cut at {cut}");
            assert_eq!(good, first_len);
        }
        // A flipped bit in the payload is caught by the checksum.
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(decode_log(&bad).0, vec![a]);
    }

    #[test]
    fn snapshot_round_trips_and_detects_corruption() {
        let pairs = [kv("x", "1", 3), kv("y", "2", 4)];
        let data = encode_snapshot(9, pairs.iter());
        let c = decode_snapshot(&data).expect("valid snapshot");
        assert_eq!(c.revision, 9);
        assert_eq!(c.mutations.len(), 2);
        let mut bad = data.clone();
        bad[12] ^= 0x40;
        assert!(decode_snapshot(&bad).is_none());
    }
}
