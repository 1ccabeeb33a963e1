//! In-process tests of the cycle's decisions, one per exit of its diagram: a `file` source,
//! `restart: none`, and a verify command (a real `sh`) that fails on content marked `bad`.
//! The black-box tests in `tests/it/` run the same paths through the binary.

use std::path::{Path, PathBuf};

use super::{run, Ctx, Request};
use crate::config::{self, Config};
use crate::cycle::report::Report;
use crate::model::labels::Outcome;
use crate::source::Source;
use crate::store::install::prev_path;
use crate::store::state::{Pending, PendingStage, Store};
use crate::util::digest::sha256_hex;

struct World {
    _dir: tempfile::TempDir,
    upstream: PathBuf,
    live: PathBuf,
    cfg: Config,
}

const GOOD_1: &str = "bucket_definitions:\n  one: {data: [\"select * from a\"]}\n";
const GOOD_2: &str = "bucket_definitions:\n  two: {data: [\"select * from b\"]}\n";
const BAD: &str = "bucket_definitions:\n  bad: {data: [\"select * from c\"]}\n";

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream.yaml");
        let live = dir.path().join("live/sync-rules.yaml");
        // "Healthy" unless the live file holds content marked bad: a stand-in for a
        // service that crashes on bad rules, as a real process.
        let text = format!(
            "state_dir: {state}\ntargets:\n  t:\n    source: {{ kind: file, path: {up} }}\n    path: {live}\n    validate: {{ require_keys: [bucket_definitions] }}\n    restart: {{ none: true }}\n    verify:\n      command: [sh, -c, \"! grep -q bad {live}\"]\n      interval: 10ms\n      successes: 1\n      timeout: 2s\n",
            state = dir.path().join("state").display(),
            up = upstream.display(),
            live = live.display(),
        );
        let cfg = config::parse(&text, Path::new("test.yaml")).unwrap();
        World {
            _dir: dir,
            upstream,
            live,
            cfg,
        }
    }

    fn store(&self) -> Store {
        Store::new(&self.cfg.state_dir, "t")
    }

    fn publish(&self, text: &str) {
        std::fs::write(&self.upstream, text).unwrap();
    }

    fn put_live(&self, text: &str) {
        std::fs::create_dir_all(self.live.parent().unwrap()).unwrap();
        std::fs::write(&self.live, text).unwrap();
    }

    fn live(&self) -> String {
        std::fs::read_to_string(&self.live).unwrap()
    }

    async fn cycle(&self, trigger: Request) -> Report {
        let t = &self.cfg.targets["t"];
        let source = Source::new(t, self.store().git_cache()).unwrap();
        struct Nobody;
        impl super::Observer for Nobody {}
        let ctx = Ctx::new(t, &source, &self.cfg.state_dir, &Nobody);
        run(&ctx, trigger).await.unwrap()
    }

    /// A state as a run leaves it that died after recording `pending` for `new`.
    fn interrupted(&self, new: &str, prev: &str) {
        let st = crate::store::state::TargetState {
            pending: Some(Pending {
                new_sha256: crate::model::ids::Sha256::of(new.as_bytes()),
                prev_sha256: Some(crate::model::ids::Sha256::of(prev.as_bytes())),
                revision: None,
                stage: PendingStage::Applying,
                started_at: chrono::Utc::now(),
                unit_running: None,
                boot_id: None,
            }),
            ..Default::default()
        };
        self.store().save(&st).unwrap();
    }

    async fn poll(&self) -> Report {
        self.cycle(Request::Poll).await
    }
}

#[tokio::test]
async fn in_sync_is_unchanged_and_a_success() {
    let w = World::new();
    w.publish(GOOD_1);
    w.put_live(GOOD_1);
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::Unchanged, "{r:?}");
    assert!(r.live.usable && r.success);
    assert_eq!(r.restarts, 0);
    assert_eq!(
        r.state.applied.unwrap().sha256,
        sha256_hex(GOOD_1.as_bytes())
    );
}

#[tokio::test]
async fn new_content_is_applied_keeping_prev() {
    let w = World::new();
    w.put_live(GOOD_1);
    w.publish(GOOD_2);
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert!(r.success);
    assert_eq!(w.live(), GOOD_2);
    assert_eq!(std::fs::read_to_string(prev_path(&w.live)).unwrap(), GOOD_1);
    assert!(r.state.pending.is_none());
    assert_eq!(r.state.last_outcome, Some(Outcome::Applied));
}

#[tokio::test]
async fn invalid_content_is_rejected_then_quarantined() {
    let w = World::new();
    w.put_live(GOOD_1);
    w.publish("other_key: 1\n");
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert!(r.live.usable, "the live file is still good");
    assert!(r.quarantined);
    assert!(
        matches!(&r.reason, Some(crate::model::reason::Reason::Rejected(w)) if w.contains("require_keys"))
    );
    assert_eq!(w.live(), GOOD_1);
    // The same upstream again is not validated again: it is known bad.
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::Quarantined, "{r:?}");
    assert!(matches!(
        r.reason,
        Some(crate::model::reason::Reason::Quarantined { .. })
    ));
    assert_eq!(w.live(), GOOD_1);
    // New upstream content clears it.
    w.publish(GOOD_2);
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert!(r.state.quarantine.is_none());
}

#[tokio::test]
async fn content_that_fails_verification_is_rolled_back() {
    let w = World::new();
    w.put_live(GOOD_1);
    w.publish(GOOD_2);
    assert_eq!(w.poll().await.outcome, Outcome::Applied);
    w.publish(BAD);
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert!(r.live.usable);
    assert!(!r.success, "upstream is not what is live");
    assert_eq!(w.live(), GOOD_2);
    let q = r.state.quarantine.clone().unwrap();
    assert_eq!(q.sha256, sha256_hex(BAD.as_bytes()));
    assert!(q.reason.contains("verification failed"), "{}", q.reason);
    assert_eq!(crate::exit::Exit::of(&r), crate::exit::Exit::Rejected);
    // And it is never applied again while upstream serves it.
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::Quarantined, "{r:?}");
    assert_eq!(w.live(), GOOD_2);
}

#[tokio::test]
async fn an_interrupted_apply_is_finished_before_anything_else() {
    let w = World::new();
    w.publish(GOOD_2);
    w.put_live(GOOD_2);
    // A run died after the swap, before verification: the live file is the new content.
    w.interrupted(GOOD_2, GOOD_1);
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(
        r.reason,
        Some(crate::model::reason::Reason::Note(
            "interrupted apply verified".into()
        ))
    );
    assert!(r.state.pending.is_none());
}

#[tokio::test]
async fn an_interrupted_bad_apply_is_rolled_back() {
    let w = World::new();
    w.publish(GOOD_1);
    w.put_live(BAD);
    std::fs::write(prev_path(&w.live), GOOD_1).unwrap();
    w.interrupted(BAD, GOOD_1);
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert_eq!(w.live(), GOOD_1);
    assert!(r.state.pending.is_none());
    assert_eq!(
        r.state.quarantine.map(|q| q.sha256),
        Some(crate::model::ids::Sha256::of(BAD.as_bytes()))
    );
}

#[tokio::test]
async fn an_operator_rollback_quarantines_what_it_left() {
    let w = World::new();
    w.put_live(GOOD_1);
    w.publish(GOOD_2);
    assert_eq!(w.poll().await.outcome, Outcome::Applied);
    let r = w.cycle(Request::Rollback).await;
    assert_eq!(r.outcome, Outcome::RolledBack, "{r:?}");
    assert_eq!(w.live(), GOOD_1);
    assert_eq!(crate::exit::Exit::of(&r), crate::exit::Exit::Ok);
    let r = w.poll().await;
    assert_eq!(r.outcome, Outcome::Quarantined, "{r:?}");
    assert_eq!(w.live(), GOOD_1);
}
