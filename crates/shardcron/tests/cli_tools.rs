//! The first commands of the `shardcron` binary, run as a user runs them: output,
//! exit codes (0 ok, 2 invalid input naming the field) and messages.

mod common;

use std::path::Path;
use std::process::Output;

use common::{assert_invalid, bin, stderr, stdout};

fn shardcron(args: &[&str]) -> Output {
    bin().args(args).output().expect("run shardcron")
}

#[test]
fn cron_next_prints_rfc3339_lines() {
    let o = shardcron(&[
        "cron",
        "next",
        "0 0 12 * * MON",
        "--from",
        "2026-01-01T00:00:00Z",
        "--count",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "2026-01-05T12:00:00Z\n2026-01-12T12:00:00Z\n2026-01-19T12:00:00Z\n"
    );
}

#[test]
fn cron_next_five_fields_are_minutes_and_from_is_exclusive() {
    let o = shardcron(&[
        "cron",
        "next",
        "*/15 * * * *",
        "--from",
        "2026-01-01T00:00:00Z",
        "--count",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "2026-01-01T00:15:00Z\n2026-01-01T00:30:00Z\n");
}

#[test]
fn cron_next_in_a_time_zone_across_spring_forward() {
    // 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day and
    // fires at the first valid instant after the gap.
    let o = shardcron(&[
        "cron",
        "next",
        "0 30 2 * * *",
        "--tz",
        "Europe/Berlin",
        "--from",
        "2026-03-28T12:00:00Z",
        "--count",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "2026-03-29T03:00:00+02:00\n2026-03-30T02:30:00+02:00\n"
    );
}

#[test]
fn cron_next_rejects_bad_input_naming_the_field() {
    assert_invalid(
        &shardcron(&["cron", "next", "61 * * * *"]),
        &["EXPR:", "61 * * * *"],
    );
    assert_invalid(&shardcron(&["cron", "next", "* * *"]), &["EXPR:"]);
    assert_invalid(
        &shardcron(&["cron", "next", "* * * * *", "--tz", "Mars/Olympus"]),
        &["--tz:", "Mars/Olympus"],
    );
    assert_invalid(
        &shardcron(&["cron", "next", "* * * * *", "--from", "yesterday"]),
        &["--from:", "yesterday"],
    );
    assert_invalid(
        &shardcron(&["cron", "next", "* * * * *", "--count", "0"]),
        &["--count:"],
    );
    // clap's own usage errors also exit 2.
    assert_invalid(&shardcron(&["cron", "next"]), &["EXPR"]);
}

#[test]
fn shard_preview_prints_the_assignment_as_json() {
    let o = shardcron(&[
        "shard",
        "preview",
        "--strategy",
        "average",
        "--items",
        "8",
        "--instances",
        "a,b,c",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), r#"{"a":[0,1,6],"b":[2,3,7],"c":[4,5]}"#);

    let o = shardcron(&[
        "shard",
        "preview",
        "--strategy",
        "weighted",
        "--items",
        "9",
        "--instances",
        "a:2,b:1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["a"].as_array().map(Vec::len), Some(6));
    assert_eq!(v["b"].as_array().map(Vec::len), Some(3));
}

#[test]
fn shard_preview_rejects_bad_input_naming_the_field() {
    assert_invalid(
        &shardcron(&[
            "shard",
            "preview",
            "--strategy",
            "random",
            "--items",
            "4",
            "--instances",
            "a",
        ]),
        &["--strategy:", "random", "average"],
    );
    assert_invalid(
        &shardcron(&["shard", "preview", "--items", "0", "--instances", "a"]),
        &["--items:", "got 0"],
    );
    assert_invalid(
        &shardcron(&["shard", "preview", "--items", "3", "--instances", "a,a"]),
        &["--instances:", "twice"],
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write job file");
    p.to_string_lossy().into_owned()
}

#[test]
fn job_validate_accepts_the_example_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/jobs.toml");
    let o = shardcron(&["job", "validate", example]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok,"), "{}", stdout(&o));
}

#[test]
fn job_validate_prints_every_problem_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "jobs.toml",
        r#"
[[job]]
name = "orders"
cron = "0 0 25 * * *"
shards = 0
kind = "script"
command = ["./sync.sh"]

[[job]]
name = "report"
cron = "0 0 8 * * *"
tz = "Atlantis/Capital"
shards = 4
shard_params = "0=a,1"
strategy = "random"
command = ["./report.sh"]

[[job]]
name = "orders"
every = "5s"
command = ["./again.sh"]
"#,
    );
    let o = shardcron(&["job", "validate", &file]);
    assert_invalid(
        &o,
        &[
            "job \"orders\": shards: must be between 1 and 10000, got 0",
            "job \"orders\": cron:",
            "job \"report\": tz:",
            "Atlantis/Capital",
            "job \"report\": shard_params:",
            "job \"report\": strategy:",
            "duplicate",
        ],
    );
}

#[test]
fn job_validate_of_a_missing_file_is_invalid_input() {
    assert_invalid(
        &shardcron(&["job", "validate", "/nonexistent/jobs.toml"]),
        &["FILE:", "/nonexistent/jobs.toml"],
    );
}
