//! The generic value that job files and alert tables are read through: TOML and
//! JSON are first turned into a [`Val`], then validated field by field, so that
//! every problem is reported at once with its field; and [`closest`], which
//! suggests the known field an unknown one was probably meant to be.

use std::collections::BTreeMap;

/// A TOML or JSON value. Datetimes stay apart from strings so that only the
/// fields that take one (a job's `at`) accept them.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// JSON `null` (readers treat it as absent).
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer (wide enough for any TOML or JSON integer).
    Int(i128),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A TOML datetime.
    Datetime(toml::value::Datetime),
    /// An array.
    Array(Vec<Val>),
    /// A table or object.
    Table(Table),
}

/// A table of values by key.
pub type Table = BTreeMap<String, Val>;

impl Val {
    /// From a TOML value.
    pub fn from_toml(v: toml::Value) -> Val {
        match v {
            toml::Value::String(s) => Val::Str(s),
            toml::Value::Integer(i) => Val::Int(i.into()),
            toml::Value::Float(f) => Val::Float(f),
            toml::Value::Boolean(b) => Val::Bool(b),
            toml::Value::Datetime(d) => Val::Datetime(d),
            toml::Value::Array(a) => Val::Array(a.into_iter().map(Val::from_toml).collect()),
            toml::Value::Table(t) => {
                Val::Table(t.into_iter().map(|(k, v)| (k, Val::from_toml(v))).collect())
            }
        }
    }

    /// From a JSON value.
    pub fn from_json(v: &serde_json::Value) -> Val {
        use serde_json::Value;
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Val::Int(i.into()),
                (None, Some(u)) => Val::Int(u.into()),
                (None, None) => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Val::Str(s.clone()),
            Value::Array(a) => Val::Array(a.iter().map(Val::from_json).collect()),
            Value::Object(o) => Val::Table(
                o.iter()
                    .map(|(k, v)| (k.clone(), Val::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The type as messages name it: `a string`, `an integer`...
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Str(_) => "a string",
            Val::Datetime(_) => "a datetime",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

/// The known name nearest to `key`, when it is close enough to be a typo.
pub fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = key.chars().count().div_ceil(3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
