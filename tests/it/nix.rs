//! The Nix expressions (flake.nix, nix/): every file parses, and nix/tests/eval.nix (the NixOS
//! module evaluated by nixpkgs' own `lib.evalModules`, with stub pkgs) passes.
//!
//! nixpkgs' `lib` comes from outside the repository: `$NIXPKGS_LIB` (the `lib/` directory of a
//! nixpkgs or `nix-community/nixpkgs.lib` checkout), else `<nixpkgs/lib>` if nix finds it.
//! Without either, the eval tests skip loudly, and fail under `RULEKEEPER_REQUIRE_NIXPKGS=1`;
//! `nix_every_file_parses` (`nix-instantiate --parse`, no lib needed) always runs.
//!
//! Every call uses `--store dummy://`: nothing here needs a Nix store, and that works as root
//! or as an unprivileged user on a fresh machine with Debian's nix-bin (no daemon, no
//! /nix/var/nix write access). A dummy store also makes any accidental copy to the store fail.

use crate::util;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn nix_instantiate(tool: &Path) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args(["--store", "dummy://"]);
    cmd
}

/// flake.nix plus every .nix file under nix/, sorted.
fn nix_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "nix") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root.join("flake.nix")];
    walk(&root.join("nix"), &mut files);
    files.sort();
    files
}

#[test]
fn nix_every_file_parses() {
    let Some(tool) = util::require_tool("nix-instantiate") else {
        return;
    };
    let root = util::repo_root();
    let files = nix_files(&root);
    for expected in [
        "flake.nix",
        "nix/default.nix",
        "nix/package.nix",
        "nix/module.nix",
        "nix/tests/vm.nix",
        "nix/tests/eval.nix",
    ] {
        assert!(
            files.contains(&root.join(expected)),
            "{expected} is missing; found {files:?}"
        );
    }
    for file in &files {
        let (ok, _out, err) = util::run(nix_instantiate(&tool).arg("--parse").arg(file));
        assert!(
            ok,
            "nix-instantiate --parse {} failed:\n{err}",
            file.display()
        );
    }
}

/// nixpkgs' `lib` directory, found as the module doc says.
fn nixpkgs_lib(tool: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NIXPKGS_LIB") {
        return Some(PathBuf::from(p));
    }
    let (ok, out, _) = util::run(nix_instantiate(tool).args(["--find-file", "nixpkgs/lib"]));
    if ok && !out.trim().is_empty() {
        return Some(PathBuf::from(out.trim()));
    }
    util::skip(
        util::Need::Nixpkgs,
        "no nixpkgs lib (set NIXPKGS_LIB to a checkout's lib/, or put nixpkgs on NIX_PATH)",
    )
}

fn run_eval_test(tool: &Path, lib: &Path, eval_nix: &Path) -> (bool, String, String) {
    util::run(
        nix_instantiate(tool)
            .args(["--eval", "--strict", "--json"])
            .arg(eval_nix)
            .arg("--arg")
            .arg("nixpkgsLib")
            .arg(lib),
    )
}

#[test]
fn nix_module_eval_test_passes() {
    let Some(tool) = util::require_tool("nix-instantiate") else {
        return;
    };
    let Some(lib) = nixpkgs_lib(&tool) else {
        return;
    };
    let root = util::repo_root();
    let (ok, out, err) = run_eval_test(&tool, &lib, &root.join("nix/tests/eval.nix"));
    assert!(ok, "nix/tests/eval.nix failed:\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));

    assert_eq!(v["ok"], true, "{v}");
    let passed = v["passed"].as_array().expect("passed is a list");
    assert_eq!(v["checks"].as_u64(), Some(passed.len() as u64));
    assert!(
        passed.len() >= 60,
        "suspiciously few checks ran: {}",
        passed.len()
    );

    let unit = &v["unit"];
    assert_eq!(unit["Type"], "notify");
    assert_eq!(unit["NotifyAccess"], "main");
    let exec = unit["ExecStart"].as_str().expect("ExecStart");
    assert!(
        exec.contains("/bin/rulekeeper run -c /nix/store/"),
        "{exec}"
    );
    assert!(unit["ExecReload"]
        .as_str()
        .unwrap()
        .ends_with("kill -HUP $MAINPID"));
    assert_eq!(unit["WatchdogSec"], "60s");
    assert_eq!(unit["Restart"], "on-failure");
    assert_eq!(unit["RestartSec"], "5s");
    assert_eq!(unit["StateDirectory"], "rulekeeper");
    assert_eq!(unit["TimeoutStartSec"], "90s");
    assert_eq!(
        unit["LoadCredential"],
        serde_json::json!([
            "forge-token:/run/secrets/reptide-powersync-syncrules-token",
            "webhook-secret:/run/secrets/rulekeeper-webhook-secret"
        ])
    );
    assert_eq!(
        unit["ReadWritePaths"],
        serde_json::json!(["/var/lib/powersync"])
    );
    assert!(unit["RestrictAddressFamilies"]
        .as_array()
        .unwrap()
        .contains(&Value::from("AF_UNIX")));

    // podman-powersync is ordered after rulekeeper and wants it, never requires it.
    let managed = v["managedUnit"].as_object().expect("managedUnit");
    assert_eq!(managed["after"], serde_json::json!(["rulekeeper.service"]));
    assert_eq!(managed["wants"], serde_json::json!(["rulekeeper.service"]));
    assert!(
        !managed.contains_key("requires") && !managed.contains_key("bindsTo"),
        "{managed:?}"
    );

    // The generated YAML: defaults filled, nulls dropped, secrets only as credential paths.
    let s = &v["settings"];
    assert_eq!(s["listen"], "127.0.0.1:9871");
    assert_eq!(s["state_dir"], "/var/lib/rulekeeper");
    let t = &s["targets"]["powersync"];
    assert_eq!(
        t["restart"],
        serde_json::json!({"systemd": "podman-powersync.service", "timeout": "120s"})
    );
    assert_eq!(
        t["source"]["token_file"],
        "/run/credentials/rulekeeper.service/forge-token"
    );
    assert_eq!(
        t["webhook"]["secret_file"],
        "/run/credentials/rulekeeper.service/webhook-secret"
    );
    assert!(
        !s.to_string().contains("/run/secrets"),
        "a host secret path leaked into the config: {s}"
    );
}

/// The eval test must have teeth: break the module in a copy of the tree and it must fail.
#[test]
fn nix_eval_test_catches_a_broken_module() {
    let Some(tool) = util::require_tool("nix-instantiate") else {
        return;
    };
    let Some(lib) = nixpkgs_lib(&tool) else {
        return;
    };
    let root = util::repo_root();
    let cases = [
        ("Type = \"notify\";", "Type = \"simple\";", "Type=notify"),
        (
            "wants = [ \"rulekeeper.service\" ];",
            "requires = [ \"rulekeeper.service\" ];",
            "managed unit wants rulekeeper",
        ),
    ];
    for (from, to, failed_check) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_dir(&root.join("nix"), &tmp.path().join("nix"));
        for f in ["Cargo.toml", "Cargo.lock"] {
            std::fs::copy(root.join(f), tmp.path().join(f)).expect("copy");
        }
        let module = tmp.path().join("nix/module.nix");
        let text = std::fs::read_to_string(&module).unwrap();
        assert_eq!(
            text.matches(from).count(),
            1,
            "`{from}` should occur once in nix/module.nix"
        );
        std::fs::write(&module, text.replace(from, to)).unwrap();

        let (ok, out, err) = run_eval_test(&tool, &lib, &tmp.path().join("nix/tests/eval.nix"));
        assert!(!ok, "eval test passed with `{to}` in the module:\n{out}");
        assert!(
            err.contains(&format!("eval test FAILED: {failed_check}")),
            "unexpected failure for `{to}`:\n{err}"
        );
    }
}

/// flake.nix has only the nixpkgs input and wires the module; nix/default.nix exposes
/// { package, module }. Checked with a stub nixpkgs (no fetching).
#[test]
fn nix_flake_and_default_entry_points() {
    let Some(tool) = util::require_tool("nix-instantiate") else {
        return;
    };
    let root = util::repo_root();
    let expr = r#"
      let
        flake = import ./flake.nix;
        stubPkgs = {
          callPackage = path: args: { pkgPath = path; };
          stdenv.hostPlatform.system = "x86_64-linux";
        };
        nixpkgs = {
          lib.genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
          legacyPackages = { x86_64-linux = stubPkgs; aarch64-linux = stubPkgs; };
        };
        self = outputs;
        outputs = flake.outputs { inherit self nixpkgs; };
        nonFlake = import ./nix { pkgs = stubPkgs; };
      in {
        inputs = builtins.attrNames flake.inputs;
        outputArgs = builtins.attrNames (builtins.functionArgs flake.outputs);
        systems = builtins.attrNames outputs.packages;
        moduleIsFile = outputs.nixosModules.default == ./nix/module.nix;
        packageIsFile = outputs.packages.x86_64-linux.default.pkgPath == ./nix/package.nix;
        checks = builtins.attrNames outputs.checks.x86_64-linux;
        nonFlakeModule = nonFlake.module == ./nix/module.nix;
        nonFlakePackage = nonFlake.package.pkgPath == ./nix/package.nix;
      }
    "#;
    let (ok, out, err) = util::run(
        nix_instantiate(&tool)
            .current_dir(&root)
            .args(["--eval", "--strict", "--json", "-E", expr]),
    );
    // `checks.vm` is only named, never evaluated (it needs pkgs.testers).
    assert!(ok, "flake/default.nix evaluation failed:\n{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        v["inputs"],
        serde_json::json!(["nixpkgs"]),
        "the flake must need nothing but nixpkgs"
    );
    assert_eq!(v["outputArgs"], serde_json::json!(["nixpkgs", "self"]));
    assert_eq!(
        v["systems"],
        serde_json::json!(["aarch64-linux", "x86_64-linux"])
    );
    assert_eq!(v["moduleIsFile"], true);
    assert_eq!(v["packageIsFile"], true);
    assert_eq!(v["checks"], serde_json::json!(["package", "vm"]));
    assert_eq!(v["nonFlakeModule"], true);
    assert_eq!(v["nonFlakePackage"], true);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}
