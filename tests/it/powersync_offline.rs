//! The offline PowerSync validator in `contrib/powersync/` (`validate FILE`), run against the
//! fixtures in `contrib/powersync/test/fixtures/`. It uses PowerSync's own parser
//! (`@powersync/service-sync-rules`, installed by `npm ci --prefix contrib/powersync`), so the
//! messages asserted here are PowerSync's own.
//!
//! Skipped (loudly) when `contrib/powersync/node_modules` is missing, unless
//! `RULEKEEPER_REQUIRE_TOOLS=1`, in which case the tests fail.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::util;

fn contrib_dir() -> PathBuf {
    util::repo_root().join("contrib").join("powersync")
}

/// The validator script, or `None` (after a loud message) when its npm dependencies are not
/// installed.
fn validator() -> Option<PathBuf> {
    let dir = contrib_dir();
    if dir.join("node_modules").is_dir() {
        return Some(dir.join("validate"));
    }
    util::skip(
        util::Need::Tool,
        "contrib/powersync/node_modules is missing (run `npm ci --prefix contrib/powersync`)",
    )
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run_validator(validate: &PathBuf, args: &[&str]) -> Outcome {
    // Run from an unrelated directory: the script must find its own files.
    let out = Command::new(validate)
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("spawn contrib/powersync/validate");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn fixture(name: &str) -> String {
    let p = contrib_dir().join("test").join("fixtures").join(name);
    assert!(p.is_file(), "fixture {} is missing", p.display());
    p.to_string_lossy().into_owned()
}

/// Runs the validator on a fixture and checks the exit code and, if given, that the output
/// has a line `FIXTURE:LINE:COL: LEVEL: ...MESSAGE...`.
fn check(name: &str, want_code: i32, want: Option<(u32, u32, &str, &str)>) -> Option<Outcome> {
    let validate = validator()?;
    let path = fixture(name);
    let out = run_validator(&validate, &[&path]);
    assert_eq!(
        out.code,
        Some(want_code),
        "{name}: unexpected exit code\n{out}"
    );
    assert!(
        !out.all().contains("    at "),
        "{name}: output looks like a JavaScript stack trace\n{out}"
    );
    if let Some((line, col, level, message)) = want {
        let prefix = format!("{path}:{line}:{col}: {level}: ");
        let found = out
            .stdout
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(message));
        assert!(
            found,
            "{name}: expected a line starting with {prefix:?} containing {message:?}\n{out}"
        );
    }
    Some(out)
}

#[test]
fn valid_bucket_definitions_pass() {
    let Some(out) = check("valid-bucket-definitions.yaml", 0, None) else {
        return;
    };
    assert!(
        out.stdout.trim().is_empty(),
        "expected no diagnostics\n{out}"
    );
}

#[test]
fn valid_sync_streams_pass() {
    let Some(out) = check("valid-streams.yaml", 0, None) else {
        return;
    };
    assert!(
        out.stdout.trim().is_empty(),
        "expected no diagnostics\n{out}"
    );
}

#[test]
fn yaml_syntax_error_is_fatal_with_location() {
    check(
        "yaml-syntax-error.yaml",
        1,
        Some((
            5,
            1,
            "fatal",
            "All mapping items must start at the same column",
        )),
    );
}

#[test]
fn unknown_sql_function_is_fatal() {
    check(
        "unknown-function.yaml",
        1,
        Some((4, 20, "fatal", "Function 'no_such_function' is not defined")),
    );
}

#[test]
fn bucket_parameter_not_covered_by_data_query_is_fatal() {
    check(
        "unused-bucket-parameter.yaml",
        1,
        Some((
            5,
            9,
            "fatal",
            r#"Query must cover all bucket parameters. Expected: ["bucket.list_id"] Got: []"#,
        )),
    );
}

#[test]
fn misspelled_top_level_key_is_fatal() {
    check(
        "misspelled-top-level-key.yaml",
        1,
        Some((
            1,
            1,
            "fatal",
            "'bucket_definitions' or 'streams' is required",
        )),
    );
}

#[test]
fn unknown_key_next_to_valid_rules_is_located() {
    check(
        "unknown-key.yaml",
        1,
        Some((
            3,
            5,
            "fatal",
            "must NOT have additional properties (unknown key 'paramters'",
        )),
    );
}

#[test]
fn bad_auth_function_in_stream_is_fatal() {
    check(
        "bad-auth-function.yaml",
        1,
        Some((7, 49, "fatal", "Unknown request function")),
    );
}

#[test]
fn alpha_streams_warning_does_not_fail() {
    let Some(out) = check(
        "alpha-streams-warning.yaml",
        0,
        Some((
            4,
            3,
            "warning",
            "This is using an alpha version of Sync Streams",
        )),
    ) else {
        return;
    };
    assert!(
        !out.stdout.contains(": fatal: "),
        "expected only warnings\n{out}"
    );
}

#[test]
fn reads_standard_input() {
    let Some(validate) = validator() else { return };
    let yaml = std::fs::read(fixture("unknown-function.yaml")).unwrap();
    let mut child = Command::new(&validate)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn contrib/powersync/validate");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&yaml).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("<stdin>:4:20: fatal: Function 'no_such_function' is not defined"),
        "{stdout}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let Some(validate) = validator() else { return };

    let out = run_validator(&validate, &[]);
    assert_eq!(out.code, Some(2), "no argument\n{out}");
    assert!(
        out.stderr.contains("usage: validate FILE"),
        "no argument\n{out}"
    );

    let missing = util::repo_root().join("contrib/powersync/test/fixtures/does-not-exist.yaml");
    let out = run_validator(&validate, &[&missing.to_string_lossy()]);
    assert_eq!(out.code, Some(2), "unreadable file\n{out}");
    assert!(out.stderr.contains("cannot read"), "unreadable file\n{out}");

    let out = run_validator(&validate, &["a.yaml", "b.yaml"]);
    assert_eq!(out.code, Some(2), "two arguments\n{out}");
}

#[test]
fn works_through_a_symlink() {
    let Some(validate) = validator() else { return };
    let dir = std::env::temp_dir().join(format!("rulekeeper-ps-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("validate");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&validate, &link).unwrap();
    let out = run_validator(&link, &[&fixture("valid-streams.yaml")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.code, Some(0), "{out}");
}

/// docs/contract.md, "Validate": a rejection's reason carries the validator's first fatal
/// messages, in PowerSync's words, with line and column, naming the target's live path
/// (never the candidate's temp file): in the log line, state, `status` and `rulekeeper validate`.
#[test]
fn rejection_reason_names_the_live_path_line_and_message() {
    let Some(validate) = validator() else { return };
    let (env, up) = util::Env::with_file_source();
    env.set_validate(&format!(
            "{{ require_keys: [bucket_definitions, streams], command: [\"{}\", \"{{file}}\"], timeout: 60s }}",
            validate.display()
        ));
    let good = "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n";
    std::fs::write(&up, good).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    let bad = "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists WHERE nosuchfunc(name)\n";
    std::fs::write(&up, bad).unwrap();
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    let want = format!(
        "{}:4:35: fatal: Function 'nosuchfunc' is not defined",
        env.live.display()
    );
    assert!(
        o.stdout.contains(&want),
        "log line lacks {want:?}\n{}",
        o.all()
    );
    let reason = env.state_json()["quarantine"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains(&want), "state reason: {reason}");
    let st = env.rk(&["status"]);
    assert!(st.stdout.contains(&want), "status: {}", st.all());
    for shown in [&o.all(), &reason, &st.all()] {
        assert!(!shown.contains(".rk-"), "temp file name leaked: {shown}");
    }
    let v = env.rk(&["validate", "-t", "ps", up.to_str().unwrap()]);
    assert_eq!(v.code, 1, "{}", v.all());
    let want = format!(
        "{}:4:35: fatal: Function 'nosuchfunc' is not defined",
        up.display()
    );
    assert!(v.stdout.contains(&want), "validate: {}", v.all());
    assert_eq!(env.live(), good);
}
