//! Execution ids.
//!
//! The store accepts any non-empty id of at most [`MAX_ID_LEN`] characters. For
//! callers that need to make one, [`new_execution_id`] returns a ULID-shaped id:
//! 26 characters of Crockford base32, a 48-bit millisecond timestamp followed by
//! 80 random bits. Ids sort by creation time as plain strings (also within one
//! millisecond of one process, where the random part is incremented instead of
//! redrawn), which keeps inserts at the right edge of the primary-key index.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Longest accepted execution id, in characters.
pub const MAX_ID_LEN: usize = 64;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const RANDOM_BITS: u32 = 80;
const RANDOM_MASK: u128 = (1u128 << RANDOM_BITS) - 1;

/// The last id handed out by this process, to stay monotonic within a millisecond.
static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// A new sortable, unique execution id for the current time.
pub fn new_execution_id() -> String {
    new_execution_id_at(Utc::now())
}

/// A new sortable, unique execution id whose time part is `at` (ids made for
/// later times sort after ids made for earlier ones).
pub fn new_execution_id_at(at: DateTime<Utc>) -> String {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0) & ((1u64 << 48) - 1);
    let (ms, random) = {
        // A poisoned lock only means another thread panicked while holding it;
        // the pair inside is still a valid (time, random) value.
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let next = if ms <= last.0 && last.1 < RANDOM_MASK {
            (last.0, last.1 + 1)
        } else {
            (ms.max(last.0), rand::random::<u128>() & RANDOM_MASK)
        };
        *last = next;
        next
    };
    let value = (u128::from(ms) << RANDOM_BITS) | random;
    let mut out = [0u8; 26];
    for (i, c) in out.iter_mut().enumerate() {
        let shift = 5 * (25 - i);
        *c = CROCKFORD[((value >> shift) & 31) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_sorted_and_ulid_shaped() {
        let ids: Vec<String> = (0..10_000).map(|_| new_execution_id()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} then {}", w[0], w[1]);
        }
        assert!(
            ids.iter()
                .all(|id| id.len() == 26 && id.bytes().all(|b| CROCKFORD.contains(&b)))
        );
    }

    #[test]
    fn time_part_orders_ids() {
        let early = DateTime::from_timestamp_millis(1_000).expect("valid time");
        let late = DateTime::from_timestamp_millis(2_000_000_000_000).expect("valid time");
        let a = new_execution_id_at(late);
        let b = new_execution_id_at(early);
        // `b` asks for an earlier time than the process already used: it still
        // sorts after, which keeps ids unique.
        assert!(b > a);
        assert!(new_execution_id() > b);
    }
}
