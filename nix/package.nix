# rulekeeper, built from this repository.
#
#   pkgs.callPackage ./nix/package.nix { }
#
# Needs a nixpkgs whose rustc satisfies Cargo.toml's rust-version (1.89).
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "rulekeeper";
  inherit (cargoToml.package) version;

  # Only what cargo needs: the manifest, the lock file and the sources. tests/ and benches/
  # are included because Cargo.toml declares the `it` test and the bench targets by path and
  # cargo refuses a manifest whose declared target is missing, even for `cargo build`. If src/ ever embeds files from
  # elsewhere (include_str!, a build.rs), add them here.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
      ../benches
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # The integration tests are black-box tests against real processes and tools (promtool,
  # vmalert, nginx, python3, node, nix-instantiate, sockets on 127.0.0.1) that the Nix build
  # sandbox does not have. They run in CI (.ci/run) instead; the NixOS VM test
  # (nix/tests/vm.nix, `nix flake check`) covers the packaged binary under systemd.
  doCheck = false;

  # `rulekeeper completions <shell>` and `rulekeeper man` print to stdout. They need to run the
  # binary, so skip them when cross-compiling.
  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd rulekeeper \
      --bash <($out/bin/rulekeeper completions bash) \
      --zsh <($out/bin/rulekeeper completions zsh) \
      --fish <($out/bin/rulekeeper completions fish)
    $out/bin/rulekeeper man > rulekeeper.1
    installManPage rulekeeper.1
  '';

  meta = {
    description = cargoToml.package.description;
    longDescription = ''
      rulekeeper is a long-running supervisor that keeps a service's rules file (for
      example a self-hosted PowerSync Service's sync-rules.yaml) in step with a file in a
      git repository: fetch, validate, atomic swap, restart, verify, roll back to the last
      good file when the service does not come up healthy. It exports Prometheus metrics and
      runs as a systemd Type=notify service (see the NixOS module in nix/module.nix).
    '';
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "rulekeeper";
    platforms = lib.platforms.linux;
  };
}
