//! The audit log: who changed what through the API, the CLI or the console.
//!
//! One row per change in `shardcron_audit` (auto-increment `id`, `at` in
//! microseconds since the Unix epoch like every time of the store, `actor`,
//! `action`, `target`, and `detail` as JSON text), indexed on `at`, `(actor, at)`
//! and `(action, at)`. Writing an entry never fails because of its size: text
//! fields are cut to their column's length ([`MAX_AUDIT_ACTOR_LEN`],
//! [`MAX_AUDIT_ACTION_LEN`], [`MAX_AUDIT_TARGET_LEN`] characters, keeping the
//! start), NUL characters (which PostgreSQL refuses) are replaced, and a detail
//! whose JSON text is longer than [`MAX_AUDIT_DETAIL_BYTES`] is replaced by
//! `{"truncated": true, "bytes": N, "text": "<the start of the JSON text>"}`,
//! which is still JSON and still says what it was about.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{keep_start, no_nul};

/// Longest stored actor (user name or `token:NAME`), in characters.
pub const MAX_AUDIT_ACTOR_LEN: usize = 255;
/// Longest stored action (`job.update`, `user.create`, ...), in characters.
pub const MAX_AUDIT_ACTION_LEN: usize = 64;
/// Longest stored target (a job, `job/item`, an instance, a user), in characters.
pub const MAX_AUDIT_TARGET_LEN: usize = 512;
/// Longest stored detail, in bytes of JSON text.
pub const MAX_AUDIT_DETAIL_BYTES: usize = 64 << 10;
/// Page size of [`AuditQuery`] when none is given.
pub const DEFAULT_AUDIT_PAGE: u32 = 100;
/// Largest page of [`AuditQuery`].
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it: a user name, `token:NAME`, `cli`, ...
    pub actor: String,
    /// What was done, e.g. `job.update`.
    pub action: String,
    /// What it was done to, e.g. a job name.
    pub target: String,
    /// Anything else worth keeping (JSON).
    pub detail: serde_json::Value,
}

/// Filters and paging for [`HistoryStore::audit`](crate::HistoryStore::audit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Page size: 1 to [`MAX_AUDIT_PAGE`]; 0 means [`DEFAULT_AUDIT_PAGE`].
    pub limit: u32,
    /// Entries to skip (newest first).
    pub offset: u64,
    /// Only entries of this actor (exact).
    pub actor: Option<String>,
    /// Only entries with this action (exact).
    pub action: Option<String>,
}

impl AuditQuery {
    /// The page size asked for, within bounds.
    pub(crate) fn page_size(&self) -> u32 {
        match self.limit {
            0 => DEFAULT_AUDIT_PAGE,
            n => n.min(MAX_AUDIT_PAGE),
        }
    }
}

/// One page of the audit log, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// The offset of the next page, when there are more entries.
    pub next_offset: Option<u64>,
}

/// `s` without NUL, at most `max` characters (keeping the start).
pub(crate) fn clean_field(s: &str, max: usize) -> String {
    let mut s = match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_owned(),
        None => s.to_owned(),
    };
    no_nul(&mut s);
    s
}

/// The JSON text stored for `detail`: at most [`MAX_AUDIT_DETAIL_BYTES`] bytes,
/// always valid JSON.
pub(crate) fn detail_text(detail: &serde_json::Value) -> String {
    let text = detail.to_string();
    if text.len() <= MAX_AUDIT_DETAIL_BYTES {
        return text;
    }
    // The start of the text, as a JSON string in a small object. Escaping can
    // grow the string (up to six bytes per byte for control characters), so
    // shrink until it fits.
    let mut budget = MAX_AUDIT_DETAIL_BYTES - 64;
    loop {
        let mut start = text.clone();
        keep_start(&mut start, budget);
        let wrapped = serde_json::json!({
            "truncated": true,
            "bytes": text.len(),
            "text": start,
        })
        .to_string();
        if wrapped.len() <= MAX_AUDIT_DETAIL_BYTES || budget == 0 {
            return wrapped;
        }
        budget /= 2;
    }
}

/// The stored JSON text back as a value (a string if it no longer parses, which
/// only a hand-edited row can do).
pub(crate) fn detail_value(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_cut_by_characters_and_lose_nul() {
        assert_eq!(clean_field("abc", 5), "abc");
        assert_eq!(clean_field("ééééé", 3), "ééé");
        assert_eq!(clean_field("a\0b", 5), "a\u{FFFD}b");
        assert_eq!(
            clean_field(&"x".repeat(600), MAX_AUDIT_TARGET_LEN).len(),
            512
        );
    }

    #[test]
    fn long_details_stay_json_and_within_bounds() {
        let small = serde_json::json!({"a": 1});
        assert_eq!(detail_text(&small), r#"{"a":1}"#);
        for filler in ["x", "é", "\u{1}", "\""] {
            let big = serde_json::json!({ "v": filler.repeat(MAX_AUDIT_DETAIL_BYTES) });
            let text = detail_text(&big);
            assert!(
                text.len() <= MAX_AUDIT_DETAIL_BYTES,
                "{filler:?}: {}",
                text.len()
            );
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(v["truncated"], true);
            assert_eq!(v["bytes"], big.to_string().len());
            let start = v["text"].as_str().expect("text");
            assert!(big.to_string().starts_with(start));
            assert!(start.len() > 1000, "{filler:?}: keeps a useful start");
        }
    }

    #[test]
    fn unreadable_detail_comes_back_as_text() {
        assert_eq!(detail_value("[1]".into()), serde_json::json!([1]));
        assert_eq!(detail_value("{oops".into()), serde_json::json!("{oops"));
    }
}
