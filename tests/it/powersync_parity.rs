//! The parity corpus (`tests/corpus/sync-rules/*.yaml`): every file goes through the offline
//! validator (`contrib/powersync/validate`, the pinned `@powersync/service-sync-rules`) and the
//! real service's `POST /api/admin/v1/validate` against a source database with a known schema
//! (`pservice::SCHEMA`). The verdicts (`ok`, `warn`, `fatal`) must agree with each other and with
//! the file's first line, `# expect: ok|warn|fatal`; a known disagreement is written
//! `# expect: disagree offline=V service=V` with the reason on the next comment line, and is
//! asserted as it is. The agreement table is in docs/powersync.md "The offline validator".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::pservice::{PowerSync, Rules};
use crate::util::repo_root;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Ok,
    Warn,
    Fatal,
}

fn verdict(word: &str) -> Option<Verdict> {
    match word {
        "ok" => Some(Verdict::Ok),
        "warn" => Some(Verdict::Warn),
        "fatal" => Some(Verdict::Fatal),
        _ => None,
    }
}

/// What the file's first line expects: (offline, service).
fn expected(path: &Path, text: &str) -> (Verdict, Verdict) {
    let first = text.lines().next().unwrap_or("");
    let rest = first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{}: no `# expect:` first line", path.display()));
    if let Some(d) = rest.strip_prefix("disagree ") {
        let mut offline = None;
        let mut service = None;
        for part in d.split_whitespace() {
            if let Some(v) = part.strip_prefix("offline=") {
                offline = verdict(v);
            } else if let Some(v) = part.strip_prefix("service=") {
                service = verdict(v);
            }
        }
        let why = text.lines().nth(1).unwrap_or("");
        assert!(
            why.starts_with("# ") && why.len() > 10,
            "{}: a disagreement says why on its second line",
            path.display()
        );
        match (offline, service) {
            (Some(o), Some(s)) if o != s => (o, s),
            _ => panic!(
                "{}: `# expect: disagree offline=V service=V` with two different verdicts",
                path.display()
            ),
        }
    } else {
        let v = verdict(rest.trim())
            .unwrap_or_else(|| panic!("{}: unknown expectation {rest:?}", path.display()));
        (v, v)
    }
}

fn offline(validate: &Path, file: &Path) -> (Verdict, String) {
    let out = Command::new(validate)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run contrib/powersync/validate");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = match out.status.code() {
        Some(0) if stdout.contains(": warning: ") => Verdict::Warn,
        Some(0) => Verdict::Ok,
        Some(1) => Verdict::Fatal,
        other => panic!(
            "{}: the validator itself failed ({other:?}): {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    (v, stdout.trim().replace('\n', " | "))
}

fn service(ps: &PowerSync, text: &str) -> (Verdict, String) {
    let data = ps.validate(text);
    let errors = data["errors"].as_array().cloned().unwrap_or_default();
    let v = if errors
        .iter()
        .any(|e| e["level"].as_str() != Some("warning"))
    {
        Verdict::Fatal
    } else if errors.is_empty() {
        Verdict::Ok
    } else {
        Verdict::Warn
    };
    let said: Vec<String> = errors
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["level"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    (v, said.join(" | "))
}

#[test]
fn offline_validator_and_service_agree_on_the_corpus() {
    let dir = repo_root().join("contrib/powersync");
    if !dir.join("node_modules").is_dir() {
        crate::util::skip::<()>(
            crate::util::Need::Tool,
            "contrib/powersync/node_modules is missing (npm ci --prefix contrib/powersync)",
        );
        return;
    }
    let validate = dir.join("validate");
    // The stand-in shares the validator's parser: only the real service can judge the corpus.
    if crate::pservice::real().is_none() {
        return;
    }
    let Some(ps) = PowerSync::new(Rules::Api) else {
        return;
    };
    ps.start();

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("tests/corpus/sync-rules"))
        .expect("tests/corpus/sync-rules")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "the corpus has {} files", files.len());

    // The offline validator starts a Node per file: two at a time (CI has two cores).
    let results: Vec<(Verdict, String)> = std::thread::scope(|s| {
        let (a, b) = files.split_at(files.len() / 2);
        let validate = &validate;
        let ha = s.spawn(move || a.iter().map(|f| offline(validate, f)).collect::<Vec<_>>());
        let hb = s.spawn(move || b.iter().map(|f| offline(validate, f)).collect::<Vec<_>>());
        let mut r = ha.join().unwrap();
        r.extend(hb.join().unwrap());
        r
    });

    let mut wrong = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    for (file, (off, off_said)) in files.iter().zip(results) {
        let text = std::fs::read_to_string(file).unwrap();
        let (want_off, want_svc) = expected(file, &text);
        let (svc, svc_said) = service(&ps, &text);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let label = if want_off == want_svc {
            format!("{want_off:?}")
        } else {
            "disagree".to_string()
        };
        *counts.entry(label).or_insert(0) += 1;
        eprintln!("{name}: offline {off:?} [{off_said}] / service {svc:?} [{svc_said}]");
        if (off, svc) != (want_off, want_svc) {
            wrong.push(format!(
                "{name}: expected offline {want_off:?} / service {want_svc:?}, got offline {off:?} [{off_said}] / service {svc:?} [{svc_said}]"
            ));
        }
    }
    eprintln!("corpus: {} files, by expectation {counts:?}", files.len());
    assert!(wrong.is_empty(), "verdicts differ:\n{}", wrong.join("\n"));
}
