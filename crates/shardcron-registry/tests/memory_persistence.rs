//! Persistence of the embedded registry: what survives a clean stop, a torn log
//! record, a kill -9 mid-stream, and a crash between snapshot and log truncation.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shardcron_registry::{
    Compare, MemoryRegistry, MemoryRegistryOptions, RangeRequest, Registry, RegistryError, Txn,
    TxnOp,
};

fn opts(dir: &Path) -> MemoryRegistryOptions {
    MemoryRegistryOptions {
        data_dir: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

#[tokio::test]
async fn clean_reopen_keeps_plain_keys_metadata_and_revision_but_not_leased_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (last_rev, a_before) = {
        let r = MemoryRegistry::open(dir.path()).expect("open");
        r.put(b"a", b"1", None).await.expect("put a");
        r.put(b"a", b"2", None).await.expect("put a again");
        r.put(b"b", b"x", None).await.expect("put b");
        r.delete(b"b").await.expect("delete b");
        let lease = r.lease_grant(Duration::from_secs(60)).await.expect("lease");
        r.put(b"leased", b"v", Some(lease.id))
            .await
            .expect("put leased");
        // A plain key later bound to a lease does not survive either.
        r.put(b"c", b"plain", None).await.expect("put c");
        let last = r
            .txn(Txn::new().and_then(TxnOp::put_with_lease(
                b"c".to_vec(),
                b"leased".to_vec(),
                lease.id,
            )))
            .await
            .expect("rebind c")
            .revision;
        let a = r.get(b"a").await.expect("get a").expect("a exists");
        r.close().await.expect("close");
        (last, a)
    };
    let r = MemoryRegistry::open(dir.path()).expect("reopen");
    assert_eq!(r.recovered_torn_bytes(), 0);
    assert_eq!(r.current_revision().await.expect("rev"), last_rev);
    let a = r.get(b"a").await.expect("get a").expect("a survives");
    assert_eq!(
        a, a_before,
        "value, create revision, mod revision and version survive"
    );
    assert_eq!(a.version, 2);
    assert_eq!(
        r.get(b"b").await.expect("get b"),
        None,
        "deleted key stays deleted"
    );
    assert_eq!(
        r.get(b"leased").await.expect("get"),
        None,
        "lease-bound key is gone"
    );
    assert_eq!(
        r.get(b"c").await.expect("get"),
        None,
        "key rebound to a lease is gone"
    );
    let next = r.put(b"d", b"new", None).await.expect("put after reopen");
    assert_eq!(next, last_rev + 1, "revisions continue, never reused");
}

#[tokio::test]
async fn torn_last_record_is_cut_without_losing_acknowledged_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let last = {
        let r = MemoryRegistry::open(dir.path()).expect("open");
        let mut last = 0;
        for i in 0..50 {
            last = r
                .put(format!("k/{i:03}").as_bytes(), b"v", None)
                .await
                .expect("put");
        }
        r.close().await.expect("close");
        last
    };
    // A crash mid-append leaves a partial record: a length and checksum header, and
    // a part of the payload.
    let wal = dir.path().join("wal");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&wal)
        .expect("wal");
    f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9])
        .expect("tear");
    drop(f);
    let size_torn = std::fs::metadata(&wal).expect("meta").len();

    let r = MemoryRegistry::open(dir.path()).expect("reopen");
    assert_eq!(r.recovered_torn_bytes(), 11);
    assert_eq!(std::fs::metadata(&wal).expect("meta").len(), size_torn - 11);
    let all = r
        .range(RangeRequest::prefix(b"k/".to_vec()))
        .await
        .expect("range");
    assert_eq!(all.kvs.len(), 50, "every acknowledged write survives");
    assert_eq!(r.current_revision().await.expect("rev"), last);
    assert_eq!(r.put(b"after", b"v", None).await.expect("put"), last + 1);
    r.close().await.expect("close");
    drop(r);
    // And the repaired log reopens cleanly.
    let r = MemoryRegistry::open(dir.path()).expect("third open");
    assert_eq!(r.recovered_torn_bytes(), 0);
    assert_eq!(r.current_revision().await.expect("rev"), last + 1);
}

#[tokio::test]
async fn snapshots_fold_the_log_and_stale_records_after_a_snapshot_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = MemoryRegistryOptions {
        snapshot_threshold_bytes: 2048,
        ..opts(dir.path())
    };
    let wal = dir.path().join("wal");
    let (old_log, last) = {
        let r = MemoryRegistry::with_options(small.clone()).expect("open");
        for i in 0..20 {
            r.put(format!("k/{i:03}").as_bytes(), &[b'a'; 40], None)
                .await
                .expect("put");
        }
        // Keep a copy of a log that a later snapshot will fold in.
        let old_log = std::fs::read(&wal).expect("read wal");
        let mut last = 0;
        for i in 0..200 {
            last = r
                .put(
                    format!("k/{:03}", i % 100).as_bytes(),
                    format!("{i}").as_bytes(),
                    None,
                )
                .await
                .expect("put");
        }
        r.close().await.expect("close");
        (old_log, last)
    };
    assert!(
        std::fs::metadata(&wal).expect("meta").len() < 2048 + 200,
        "the log was folded into a snapshot"
    );
    assert!(dir.path().join("snapshot").exists());
    // Simulate a crash after the snapshot's rename but before the log's truncation:
    // the old records come back in front of the log.
    let current = std::fs::read(&wal).expect("read wal");
    std::fs::write(&wal, [old_log, current].concat()).expect("write wal");

    let r = MemoryRegistry::with_options(small).expect("reopen");
    assert_eq!(r.current_revision().await.expect("rev"), last);
    let all = r
        .range(RangeRequest::prefix(b"k/".to_vec()))
        .await
        .expect("range");
    assert_eq!(all.kvs.len(), 100);
    for kv in &all.kvs {
        let i: usize = std::str::from_utf8(&kv.key[2..])
            .expect("utf8")
            .parse()
            .expect("num");
        assert_eq!(
            kv.value,
            format!("{}", 100 + i).into_bytes(),
            "latest value of {i}"
        );
        let expected_version = if i < 20 { 3 } else { 2 };
        assert_eq!(kv.version, expected_version, "version of k/{i:03}");
    }
}

#[tokio::test]
async fn a_data_dir_is_opened_by_one_registry_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = MemoryRegistry::open(dir.path()).expect("open");
    let err = MemoryRegistry::open(dir.path()).expect_err("second open must fail");
    assert!(
        matches!(&err, RegistryError::Storage(m) if m.contains("in use by another")),
        "{err}"
    );
}

#[tokio::test]
async fn a_corrupt_snapshot_refuses_to_start_instead_of_starting_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let r = MemoryRegistry::with_options(MemoryRegistryOptions {
            snapshot_threshold_bytes: 1,
            ..opts(dir.path())
        })
        .expect("open");
        r.put(b"a", b"1", None).await.expect("put");
        r.close().await.expect("close");
    }
    let snap = dir.path().join("snapshot");
    let mut data = std::fs::read(&snap).expect("snapshot written");
    data[10] ^= 0xff;
    std::fs::write(&snap, data).expect("corrupt");
    let err = MemoryRegistry::open(dir.path()).expect_err("must refuse");
    assert!(err.to_string().contains("snapshot is corrupt"), "{err}");
}

/// The writer half of the kill -9 test: runs in a child process (this same test
/// binary), writes keys and prints each acknowledged revision.
#[tokio::test]
async fn kill9_child_writer() {
    let Ok(dir) = std::env::var("SHARDCRON_KILL9_DIR") else {
        return; // Only does something when started by the parent test below.
    };
    let r = MemoryRegistry::open(Path::new(&dir)).expect("child open");
    let lease = r.lease_grant(Duration::from_secs(60)).await.expect("lease");
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let key = format!("k/{i:08}");
        // Alternate plain puts with claim-like txns that also touch a leased key.
        let rev = if i % 2 == 0 {
            r.put(key.as_bytes(), b"v", None).await.expect("put")
        } else {
            r.txn(
                Txn::new()
                    .when(Compare::absent(key.clone().into_bytes()))
                    .and_then(TxnOp::put(key.clone().into_bytes(), b"v".to_vec()))
                    .and_then(TxnOp::put_with_lease(
                        b"hb".to_vec(),
                        key.clone().into_bytes(),
                        lease.id,
                    )),
            )
            .await
            .expect("txn")
            .revision
        };
        writeln!(out, "ack {rev} {key}").expect("stdout");
        out.flush().expect("flush");
    }
}

#[tokio::test]
async fn kill9_mid_stream_loses_no_acknowledged_write_and_reuses_no_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "kill9_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHARDCRON_KILL9_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child writer");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ack") {
            continue;
        }
        let rev: i64 = parts.next().and_then(|r| r.parse().ok()).expect("revision");
        let key = parts.next().expect("key").to_string();
        acked.push((rev, key));
        if acked.len() == 400 {
            child.kill().expect("kill -9 the writer"); // SIGKILL
            break;
        }
    }
    child.wait().expect("reap child");
    assert_eq!(
        acked.len(),
        400,
        "the child acknowledged writes before the kill"
    );

    let r = MemoryRegistry::open(dir.path()).expect("reopen after kill -9");
    for (rev, key) in &acked {
        let kv = r
            .get(key.as_bytes())
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("acknowledged key {key} (revision {rev}) was lost"));
        assert_eq!(kv.mod_revision, *rev, "{key} keeps its revision");
    }
    assert_eq!(
        r.get(b"hb").await.expect("get"),
        None,
        "lease-bound key is gone"
    );
    let last_acked = acked.last().map(|(r, _)| *r).unwrap_or_default();
    let cur = r.current_revision().await.expect("rev");
    assert!(
        cur >= last_acked,
        "revision {cur} went below acknowledged {last_acked}"
    );
    let next = r.put(b"after", b"v", None).await.expect("put");
    assert!(
        next > last_acked,
        "revision {next} reused (acknowledged {last_acked})"
    );
}
