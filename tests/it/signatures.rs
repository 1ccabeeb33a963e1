//! `source.require_signature`: real keys (`ssh-keygen`, Debian's `gpg`/`gpgv`), real commits
//! signed by `git commit -S`, served by a real `git daemon`, and the fake forge serving the
//! commit objects, signatures and trees of that same repository as Forgejo's and GitHub's
//! APIs do (a stand-in: no forge runs here).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::forge::FakeForge;
use crate::sources::git_daemon;
use crate::util::{self, rules, wait_until, Env};

/// A working repository pushing to a bare one that `git daemon` serves, committing as
/// `t@example.com` with the signing options each call names.
struct Repo {
    work: PathBuf,
    base: PathBuf,
    gnupg: PathBuf,
}

/// A signer: SSH (a private key file) or OpenPGP (a key in the test's GNUPGHOME).
#[derive(Clone, Copy)]
enum Sign<'a> {
    None,
    Ssh(&'a Path),
    Gpg,
}

impl Repo {
    fn new(dir: &Path) -> Repo {
        let (base, work) = crate::sources::bare_and_clone(dir);
        let gnupg = dir.join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        Repo { work, base, gnupg }
    }

    fn git(&self, args: &[&str]) -> String {
        crate::sources::git_with(&self.work, args, &[("GNUPGHOME", &self.gnupg)])
    }

    /// Commits `content` as the rules file (`amend`: replacing the last commit) and
    /// force-pushes; the new commit id.
    fn commit(&self, content: &str, sign: Sign, amend: bool) -> String {
        std::fs::create_dir_all(self.work.join("powersync")).unwrap();
        std::fs::write(self.work.join("powersync/sync-rules.yaml"), content).unwrap();
        self.git(&["add", "-A"]);
        let key;
        let mut args: Vec<&str> = Vec::new();
        match sign {
            Sign::None => args.push("-c"),
            Sign::Ssh(k) => {
                key = format!("user.signingkey={}", k.display());
                args.extend(["-c", "gpg.format=ssh", "-c", key.as_str(), "-c"]);
            }
            Sign::Gpg => args.extend(["-c", "user.signingkey=t@example.com", "-c"]),
        }
        args.push("commit.gpgsign=false");
        args.extend(["commit", "--quiet", "--allow-empty", "-m", "rules"]);
        if amend {
            args.push("--amend");
        }
        if !matches!(sign, Sign::None) {
            args.push("-S");
        }
        self.git(&args);
        self.git(&["push", "--quiet", "--force", "origin", "HEAD:master"]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// Stops the gpg-agent that signing started in the test's GNUPGHOME.
struct Agent(PathBuf);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "all"])
            .env("GNUPGHOME", &self.0)
            .status();
    }
}

fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let (ok, _, err) = util::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
    );
    assert!(ok, "ssh-keygen: {err}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    (key, public.join(" "))
}

/// git's own verdict on `commit` with the same allowed-signers file: rulekeeper's must agree.
fn git_says(repo: &Repo, commit: &str, signers: &Path) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(&repo.work)
        .arg("-c")
        .arg(format!("gpg.ssh.allowedSignersFile={}", signers.display()))
        .args(["verify-commit", commit])
        .output()
        .expect("git verify-commit")
        .status
        .success()
}

fn tools() -> bool {
    ["git", "ssh-keygen", "gpg", "gpgv", "gpgconf"]
        .iter()
        .all(|t| util::require_tool(t).is_some())
}

fn outcome(o: &util::Out) -> String {
    o.all()
}

#[test]
fn git_source_applies_only_what_an_allowed_key_signed() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let d = env.dir.path();
    let repo = Repo::new(d);
    let _agent = Agent(repo.gnupg.clone());
    let (alice, alice_pub) = ssh_key(d, "alice");
    let (mallory, mallory_pub) = ssh_key(d, "mallory");
    let (old, old_pub) = ssh_key(d, "old");
    let signers = d.join("allowed_signers");
    std::fs::write(
        &signers,
        format!(
            "# the team\nt@example.com namespaces=\"git\" {alice_pub}\nt@example.com valid-before=\"20200101\" {old_pub}\n"
        ),
    )
    .unwrap();
    let c1 = repo.commit(&rules("v1", "good"), Sign::Ssh(&alice), false);
    let gd = git_daemon(&repo.base);
    env.write_config(
        &format!(
            "{{ kind: git, url: \"git://127.0.0.1:{}/app.git\", ref: master, path: powersync/sync-rules.yaml, timeout: 10s, require_signature: {{ allowed_signers: \"{}\" }} }}",
            gd.port,
            signers.display()
        ),
        "{ none: true }",
        "{ none: true }",
        "",
    );
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 0, "{}", o.all());

    // signed by an allowed key: applied
    let o = env.once();
    assert_eq!(o.code, 0, "{}", outcome(&o));
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(env.state_json()["applied"]["revision"], c1.as_str());
    assert!(git_says(&repo, &c1, &signers), "git agrees: signed");

    // unsigned: rejected, by revision, and the live file stays
    let c2 = repo.commit(&rules("v2", "good"), Sign::None, false);
    let o = env.once();
    let want = format!(
        "commit {} is not signed by an allowed key: it is not signed",
        &c2[..12]
    );
    assert!(o.stdout.contains("rejected"), "{}", outcome(&o));
    assert!(o.all().contains(&want), "{}", outcome(&o));
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(env.state_json()["unsigned"]["revision"], c2.as_str());
    assert!(!git_says(&repo, &c2, &signers), "git agrees: unsigned");
    let st = env.rk(&["status"]);
    assert!(st.stdout.contains(&want), "status shows why: {}", st.stdout);
    // asked again: the standing refusal, not a new rejection
    let o = env.once();
    assert!(o.stdout.contains("quarantined"), "{}", outcome(&o));
    assert_eq!(env.live(), rules("v1", "good"));

    // the same bytes, re-committed signed (amended and force-pushed): applied
    let c3 = repo.commit(&rules("v2", "good"), Sign::Ssh(&alice), true);
    assert_ne!(c3, c2);
    let o = env.once();
    assert_eq!(o.code, 0, "{}", outcome(&o));
    assert_eq!(env.live(), rules("v2", "good"));
    assert_eq!(env.state_json()["applied"]["revision"], c3.as_str());
    assert!(env.state_json()["unsigned"].is_null());

    // signed by a key not in the list: rejected
    let c4 = repo.commit(&rules("v3", "good"), Sign::Ssh(&mallory), false);
    let o = env.once();
    assert!(o.stdout.contains("rejected"), "{}", outcome(&o));
    assert!(
        o.all().contains(&format!(
            "commit {} is not signed by an allowed key: no key in",
            &c4[..12]
        )),
        "{}",
        outcome(&o)
    );
    assert_eq!(env.live(), rules("v2", "good"));
    assert!(!git_says(&repo, &c4, &signers), "git agrees: unknown key");

    // signed by a listed key past its valid-before: rejected
    let c5 = repo.commit(&rules("v4", "good"), Sign::Ssh(&old), false);
    let o = env.once();
    assert!(
        o.all().contains(&format!(
            "commit {} is not signed by an allowed key",
            &c5[..12]
        )),
        "{}",
        outcome(&o)
    );
    assert_eq!(env.live(), rules("v2", "good"));
    assert!(
        !git_says(&repo, &c5, &signers),
        "git agrees: past valid-before"
    );

    // a key added to the file is picked up by the running daemon, no restart
    let c6 = repo.commit(&rules("v5", "good"), Sign::Ssh(&mallory), false);
    env.edit(|t| t.set("interval", "1s"));
    let dm = env.daemon(None);
    dm.wait_ready();
    wait_until(30, "the mallory-signed commit refused", || {
        env.state_json()["unsigned"]["revision"] == c6.as_str()
    });
    // alerted like any refused content: the quarantine gauge and its reason
    wait_until(30, "the refusal on /metrics", || {
        util::metric(&dm.metrics(), "rulekeeper_quarantined", &[("target", "ps")]) == Some(1.0)
    });
    assert!(
        util::samples(&dm.metrics(), "rulekeeper_quarantined_info")
            .iter()
            .any(|l| l.contains("is not signed by an allowed key")),
        "{}",
        dm.metrics()
    );
    let pid = dm.child.id();
    let mut text = std::fs::read_to_string(&signers).unwrap();
    text.push_str(&format!("t@example.com {mallory_pub}\n"));
    std::fs::write(&signers, text).unwrap();
    wait_until(30, "the rotated-in key lets the commit through", || {
        env.state_json()["applied"]["revision"] == c6.as_str()
    });
    assert_eq!(env.live(), rules("v5", "good"));
    assert_eq!(dm.child.id(), pid);
    wait_until(30, "the refusal cleared on /metrics", || {
        util::metric(&dm.metrics(), "rulekeeper_quarantined", &[("target", "ps")]) == Some(0.0)
    });
    assert_eq!(dm.terminate(), 0);

    // OpenPGP: a key in the keyring `gpgv` reads
    let (ok, _, err) = util::run(
        Command::new("gpg")
            .args([
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "t <t@example.com>",
                "ed25519",
                "sign",
                "never",
            ])
            .env("GNUPGHOME", &repo.gnupg),
    );
    assert!(ok, "gpg --quick-gen-key: {err}");
    let keyring = d.join("keyring.gpg");
    let out = Command::new("gpg")
        .args(["--batch", "--export"])
        .env("GNUPGHOME", &repo.gnupg)
        .output()
        .unwrap();
    assert!(out.status.success() && !out.stdout.is_empty());
    std::fs::write(&keyring, &out.stdout).unwrap();
    let c7 = repo.commit(&rules("v6", "good"), Sign::Gpg, false);
    // without a keyring configured: refused, saying what is missing
    let o = env.once();
    assert!(
        o.all()
            .contains("it is signed with OpenPGP, and no `gpg_keyring` is configured"),
        "{}",
        outcome(&o)
    );
    env.edit(|t| {
        let mut source = t.get("source").cloned().expect("source");
        source["require_signature"]["gpg_keyring"] = keyring.display().to_string().into();
        t.set("source", source)
    });
    let o = env.once();
    assert_eq!(o.code, 0, "{}", outcome(&o));
    assert_eq!(env.state_json()["applied"]["revision"], c7.as_str());
    assert_eq!(env.live(), rules("v6", "good"));

    // `committers`: a signed commit by a committer not on the list is refused
    env.edit(|t| {
        let mut source = t.get("source").cloned().expect("source");
        source["require_signature"]["committers"] = util::yaml("[release@example.com]");
        t.set("source", source)
    });
    let c8 = repo.commit(&rules("v7", "good"), Sign::Ssh(&alice), false);
    let o = env.once();
    assert!(
        o.all().contains(&format!(
            "commit {} is not signed by an allowed key: its committer <t@example.com> is not in `committers`",
            &c8[..12]
        )),
        "{}",
        outcome(&o)
    );
    assert_eq!(env.live(), rules("v6", "good"));
}

#[test]
fn check_names_the_file_and_line_of_a_broken_allowed_signers() {
    let env = Env::new();
    let signers = env.dir.path().join("allowed_signers");
    std::fs::write(&signers, "# ok\nt@example.com ssh-ed25519\n").unwrap();
    env.write_config(
        &format!(
            "{{ kind: git, url: \"git://127.0.0.1:9/app.git\", path: a.yaml, require_signature: {{ allowed_signers: \"{}\" }} }}",
            signers.display()
        ),
        "{ none: true }",
        "{ none: true }",
        "",
    );
    let o = env.rk(&["check"]);
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(
        o.all().contains(&format!("{}:2:", signers.display())),
        "names the file and line: {}",
        o.all()
    );
    assert!(o.all().contains("require_signature"), "{}", o.all());
    // neither key file: refused
    env.edit(|t| {
        let mut source = t.get("source").cloned().expect("source");
        source["require_signature"] = util::yaml("{ committers: [a@example.com] }");
        t.set("source", source)
    });
    let o = env.rk(&["check"]);
    assert_ne!(o.code, 0);
    assert!(
        o.all()
            .contains("set `allowed_signers`, `gpg_keyring`, or both"),
        "{}",
        o.all()
    );
    // GitLab's API gives no signed payload: pointed to `kind: git`
    env.edit(|t| {
        t.set(
            "source",
            util::yaml(&format!(
                "{{ kind: gitlab, base_url: \"http://127.0.0.1:9\", repo: 1, path: a.yaml, require_signature: {{ allowed_signers: \"{}\" }} }}",
                signers.display()
            )),
        )
    });
    let o = env.rk(&["check"]);
    assert_ne!(o.code, 0);
    assert!(o.all().contains("kind: git"), "{}", o.all());
}

#[test]
fn forge_sources_verify_here_and_bind_the_bytes_to_the_signed_tree() {
    if !tools() {
        return;
    }
    for kind in ["forgejo", "github"] {
        let env = Env::new();
        let d = env.dir.path();
        let repo = Repo::new(d);
        let (alice, alice_pub) = ssh_key(d, "alice");
        let signers = d.join("allowed_signers");
        std::fs::write(&signers, format!("t@example.com {alice_pub}\n")).unwrap();
        // another file beside it, so a lying forge has other bytes of the same tree to serve
        std::fs::write(repo.work.join("README"), "not rules\n").unwrap();
        let c1 = repo.commit(&rules("v1", "good"), Sign::Ssh(&alice), false);
        let forge = FakeForge::start("tok");
        let path = "powersync/sync-rules.yaml";
        forge.serve_git(&repo.work, &c1, path);
        let tf = env.write_token("tok");
        let source = format!(
            "{{ kind: {kind}, base_url: \"{}\", repo: o/r, path: {path}, token_file: \"{}\", require_signature: {{ allowed_signers: \"{}\" }} }}",
            forge.base_url(),
            tf.display(),
            signers.display()
        );
        env.write_config(&source, "{ none: true }", "{ none: true }", "");

        // signed by an allowed key: applied
        let o = env.once();
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert_eq!(env.live(), rules("v1", "good"), "{kind}");

        // a lying forge: the signed commit named, bytes from elsewhere (integrity alone passes)
        let lie = rules("evil", "good");
        forge.serve_bytes_as(&c1, lie.as_bytes());
        let o = env.once();
        assert!(o.stdout.contains("rejected"), "{kind}: {}", o.all());
        assert!(
            o.all()
                .contains("are not the `powersync/sync-rules.yaml` of the signed commit"),
            "{kind}: {}",
            o.all()
        );
        assert_eq!(env.live(), rules("v1", "good"), "{kind}");

        // unsigned: rejected
        let c2 = repo.commit(&rules("v2", "good"), Sign::None, false);
        forge.serve_git(&repo.work, &c2, path);
        let o = env.once();
        assert!(
            o.all().contains(&format!(
                "commit {} is not signed by an allowed key: it is not signed",
                &c2[..12]
            )),
            "{kind}: {}",
            o.all()
        );
        assert_eq!(env.live(), rules("v1", "good"), "{kind}");

        // a payload that does not hash to the sha (another commit's valid signature): rejected
        forge.swap_signed_payload(&c2, &c1);
        let o = env.once();
        assert!(
            o.all().contains(&format!("not to the commit {c2}")),
            "{kind}: {}",
            o.all()
        );
        assert_eq!(env.live(), rules("v1", "good"), "{kind}");

        // the same bytes re-committed signed (amend, force-push): applied, though the file's
        // own answer is a 304
        let c3 = repo.commit(&rules("v2", "good"), Sign::Ssh(&alice), true);
        forge.serve_git(&repo.work, &c3, path);
        let o = env.once();
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert_eq!(env.live(), rules("v2", "good"), "{kind}");
        assert_eq!(
            env.state_json()["applied"]["revision"],
            c3.as_str(),
            "{kind}"
        );

        // signed by a key not in the list, and by a listed key past its valid-before: rejected
        let (mallory, mallory_pub) = ssh_key(d, "mallory");
        let (old, old_pub) = ssh_key(d, "old");
        let mut text = std::fs::read_to_string(&signers).unwrap();
        text.push_str(&format!(
            "t@example.com valid-before=\"20200101\" {old_pub}\n"
        ));
        std::fs::write(&signers, &text).unwrap();
        for (key, what) in [(&old, "past valid-before"), (&mallory, "unknown key")] {
            let c = repo.commit(&rules(what, "good"), Sign::Ssh(key), false);
            forge.serve_git(&repo.work, &c, path);
            let o = env.once();
            assert!(
                o.all().contains(&format!(
                    "commit {} is not signed by an allowed key: no key in",
                    &c[..12]
                )),
                "{kind}, {what}: {}",
                o.all()
            );
            assert_eq!(env.live(), rules("v2", "good"), "{kind}, {what}");
        }

        // the key rotated into the file: the same revision passes
        text.push_str(&format!("t@example.com {mallory_pub}\n"));
        std::fs::write(&signers, &text).unwrap();
        let o = env.once();
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert_eq!(env.live(), rules("unknown key", "good"), "{kind}");
    }
}
