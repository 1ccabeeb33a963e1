# Evaluation test for nix/module.nix and nix/package.nix with nixpkgs' own module system:
#
#   nix-instantiate --store dummy:// --eval --strict --json nix/tests/eval.nix \
#     --arg nixpkgsLib /path/to/nixpkgs/lib
#
# `nixpkgsLib` is nixpkgs' `lib` directory (tests/it/nix.rs passes $NIXPKGS_LIB or
# <nixpkgs/lib>). The module is evaluated by the real `lib.evalModules`, so
# option types, defaults, priorities (mkDefault), mkIf/mkMerge, readOnly and undeclared
# options behave exactly as on NixOS. No NixOS modules are loaded: `nixosStubs` declares only
# the NixOS options module.nix sets, and `pkgs` is a stub of fake derivations (nothing is built
# or copied to the store). Any failed check throws ("eval test FAILED: ..."), so the command
# exits non-zero; on success it prints a JSON summary with "ok": true.
{
  nixpkgsLib ? <nixpkgs/lib>,
}:
let
  lib = import nixpkgsLib;
  inherit (lib) types mkOption;

  # --- the NixOS options module.nix sets, declared as loosely as NixOS declares them ------

  listOfStr = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  nixosStubs = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.anything;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf (
          types.submodule {
            freeformType = types.attrsOf types.anything;
            options.source = mkOption { type = types.anything; };
          }
        );
        default = { };
      };
      systemd.services = mkOption {
        type = types.attrsOf (
          types.submodule {
            freeformType = types.attrsOf types.anything;
            options = {
              description = mkOption {
                type = types.str;
                default = "";
              };
              wantedBy = listOfStr;
              wants = listOfStr;
              after = listOfStr;
              requires = listOfStr;
              bindsTo = listOfStr;
              path = mkOption {
                type = types.listOf types.anything;
                default = [ ];
              };
              serviceConfig = mkOption {
                type = types.attrsOf types.anything;
                default = { };
              };
            };
          }
        );
        default = { };
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      security.polkit.enable = mkOption {
        type = types.bool;
        default = false;
      };
      security.polkit.extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      users.users = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
    };
  };

  # --- stub pkgs --------------------------------------------------------------------------

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  pkgs = rec {
    # package.nix's `src` would copy the repository into the store: keep the description.
    lib = import nixpkgsLib // {
      fileset = {
        toSource = args: args // { _type = "fileset-source"; };
        unions = xs: xs;
      };
    };
    formats.yaml = _: {
      type = types.anything;
      generate = name: value: fakeDrv name // { inherit value; };
    };
    runCommand = name: env: script: fakeDrv name // { inherit env script; };
    # Like the real one, evaluating the derivation needs npmDepsHash.
    buildNpmPackage =
      args: builtins.seq args.npmDepsHash (fakeDrv "${args.pname}-${args.version}" // { inherit args; });
    writeText = name: text: fakeDrv name // { inherit text; };
    callPackage =
      path: args:
      let
        f = import path;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
    rustPlatform.buildRustPackage = args: fakeDrv "${args.pname}-${args.version}" // { inherit args; };
    stdenv = {
      buildPlatform.canExecute = _: true;
      hostPlatform = { };
    };
    installShellFiles = fakeDrv "install-shell-files";
    coreutils = fakeDrv "coreutils";
    nodejs_22 = fakeDrv "nodejs-22";
    gitMinimal = fakeDrv "git-minimal";
    openssh = fakeDrv "openssh";
    gnupg = fakeDrv "gnupg";
  };

  evalModule =
    userCfg:
    let
      ev = lib.evalModules {
        modules = [
          ../module.nix
          nixosStubs
          { _module.args.pkgs = pkgs; }
          { services.rulekeeper = userCfg; }
        ];
      };
      config = ev.config;
    in
    {
      inherit config;
      cfg = config.services.rulekeeper;
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
    };

  # --- checks -----------------------------------------------------------------------------

  check = name: cond: if cond then name else throw "eval test FAILED: ${name}";
  checkEq =
    name: got: want:
    if got == want then
      name
    else
      throw "eval test FAILED: ${name}: got ${builtins.toJSON got}, want ${builtins.toJSON want}";
  fails = v: !(builtins.tryEval (builtins.deepSeq v v)).success;
  # A unit as NixOS would write it: the list options that are empty are not there at all.
  unitShape = lib.filterAttrs (_: v: v != [ ] && v != "" && v != { });

  # 1. The seeds' PowerSync host (same as docs/nixos.md).
  powersync = evalModule {
    enable = true;
    credentials = {
      forge-token = "/run/secrets/reptide-powersync-syncrules-token";
      webhook-secret = "/run/secrets/rulekeeper-webhook-secret";
    };
    settings.targets.powersync = {
      source = {
        kind = "forgejo";
        base_url = "https://git.cloonar.com";
        repo = "Cloonar/fit";
        path = "powersync/sync-rules.yaml";
        ref = "master";
        token_file = "/run/credentials/rulekeeper.service/forge-token";
      };
      path = "/var/lib/powersync/sync-rules.yaml";
      mode = "0644";
      interval = "5m";
      validate = {
        yaml = true;
        require_keys = [ "bucket_definitions" ];
      };
      restart = {
        systemd = "podman-powersync.service";
        timeout = "120s";
      };
      verify = {
        http = "http://127.0.0.1:8080/probes/liveness";
        timeout = "90s";
        interval = "2s";
        successes = 3;
      };
      webhook.secret_file = "/run/credentials/rulekeeper.service/webhook-secret";
    };
  };
  ps = powersync.config;
  unit = ps.systemd.services.rulekeeper;
  sc = unit.serviceConfig;
  managed = unitShape ps.systemd.services.podman-powersync;
  generated = powersync.cfg.configFile;
  # What the module passed to formats.yaml.generate (the stub keeps it as `value`).
  settingsOut = ps.environment.etc."rulekeeper/config.yaml".source.value;
  pkg = powersync.cfg.package;

  powersyncChecks = [
    (checkEq "no failed assertions" powersync.failedAssertions [ ])
    (checkEq "no warnings" powersync.warnings [ ])
    (checkEq "Type=notify" sc.Type "notify")
    (checkEq "NotifyAccess=main" sc.NotifyAccess "main")
    (check "ExecStart runs `rulekeeper run -c`" (lib.hasInfix "/bin/rulekeeper run -c " sc.ExecStart))
    (checkEq "ExecStart is package + generated config" sc.ExecStart "${pkg}/bin/rulekeeper run -c ${generated}")
    (check "ExecReload sends SIGHUP" (lib.hasSuffix "kill -HUP $MAINPID" sc.ExecReload))
    (checkEq "WatchdogSec" sc.WatchdogSec "60s")
    (checkEq "Restart=on-failure" sc.Restart "on-failure")
    (checkEq "RestartSec" sc.RestartSec "5s")
    (checkEq "StateDirectory" sc.StateDirectory "rulekeeper")
    (checkEq "TimeoutStartSec = startup_timeout + 30s" sc.TimeoutStartSec "90s")
    (checkEq "LoadCredential" sc.LoadCredential [
      "forge-token:/run/secrets/reptide-powersync-syncrules-token"
      "webhook-secret:/run/secrets/rulekeeper-webhook-secret"
    ])
    (checkEq "ReadWritePaths = live dir" sc.ReadWritePaths [ "/var/lib/powersync" ])
    (checkEq "runs as root by default" sc.User "root")
    (check "no capability drop for root" (!(sc ? CapabilityBoundingSet)))
    (checkEq "ProtectSystem=strict" sc.ProtectSystem "strict")
    (check "ProtectHome, PrivateTmp, NoNewPrivileges" (sc.ProtectHome && sc.PrivateTmp && sc.NoNewPrivileges))
    (checkEq "RestrictAddressFamilies" sc.RestrictAddressFamilies [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ])
    (check "MemoryDenyWriteExecute without node" sc.MemoryDenyWriteExecute)
    (checkEq "wantedBy" unit.wantedBy [ "multi-user.target" ])
    (check "after network-online" (builtins.elem "network-online.target" unit.after))
    (checkEq "managed unit after rulekeeper" (managed.after or null) [ "rulekeeper.service" ])
    (checkEq "managed unit wants rulekeeper" (managed.wants or null) [ "rulekeeper.service" ])
    (check "managed unit does not require rulekeeper" (!(managed ? requires) && !(managed ? bindsTo)))
    (checkEq "only rulekeeper + the managed unit are touched" (builtins.attrNames ps.systemd.services) [
      "podman-powersync"
      "rulekeeper"
    ])
    (checkEq "managedUnits" powersync.cfg.managedUnits [ "podman-powersync.service" ])
    (checkEq "firewall untouched" ps.networking.firewall.allowedTCPPorts [ ])
    (check "no polkit, no users for root" (!ps.security.polkit.enable && ps.users.users == { } && ps.users.groups == { }))
    (checkEq "config linked for the CLI" "${ps.environment.etc."rulekeeper/config.yaml".source}" generated)
    (checkEq "package in systemPackages" ps.environment.systemPackages [ pkg ])
    # generated YAML content
    (checkEq "listen default" settingsOut.listen "127.0.0.1:9871")
    (checkEq "state_dir default" settingsOut.state_dir "/var/lib/rulekeeper")
    (checkEq "startup_timeout default" settingsOut.startup_timeout "60s")
    (checkEq "nulls dropped from restart" settingsOut.targets.powersync.restart {
      systemd = "podman-powersync.service";
      timeout = "120s";
    })
    (checkEq "verify passed through" settingsOut.targets.powersync.verify {
      http = "http://127.0.0.1:8080/probes/liveness";
      timeout = "90s";
      interval = "2s";
      successes = 3;
    })
    (checkEq "token from a credential" settingsOut.targets.powersync.source.token_file "/run/credentials/rulekeeper.service/forge-token")
    (check "max_bytes (null) left out" (!(settingsOut.targets.powersync ? max_bytes)))
    (check "no _module in YAML" (!(settingsOut ? _module) && !(settingsOut.targets.powersync ? _module)))
    (check "no secrets in YAML" (!(lib.hasInfix "/run/secrets" (builtins.toJSON settingsOut))))
    # package.nix through the stub callPackage
    (checkEq "pname" pkg.args.pname "rulekeeper")
    (checkEq "version from Cargo.toml" pkg.args.version (lib.importTOML ../../Cargo.toml).package.version)
    (check "cargoLock.lockFile = ../Cargo.lock" (lib.hasSuffix "/Cargo.lock" (toString pkg.args.cargoLock.lockFile)))
    (checkEq "doCheck = false" pkg.args.doCheck false)
    (check "completions installed" (lib.hasInfix "rulekeeper completions bash" pkg.args.postInstall
      && lib.hasInfix "completions zsh" pkg.args.postInstall
      && lib.hasInfix "completions fish" pkg.args.postInstall))
    (check "man page installed" (lib.hasInfix "rulekeeper man > rulekeeper.1" pkg.args.postInstall
      && lib.hasInfix "installManPage" pkg.args.postInstall))
    (checkEq "mainProgram" pkg.args.meta.mainProgram "rulekeeper")
    (check "src is a fileset of the repo" (pkg.args.src._type == "fileset-source"))
    (check "src has every target cargo declares (tests, benches)" (
      builtins.any (p: lib.hasSuffix "/tests" (toString p)) pkg.args.src.fileset
      && builtins.any (p: lib.hasSuffix "/benches" (toString p)) pkg.args.src.fileset
    ))
  ];

  # 2. Minimal: file source, no restart, no credentials, compound startup timeout.
  minimal = evalModule {
    enable = true;
    settings = {
      startup_timeout = "2m 30s";
      targets.demo = {
        source = {
          kind = "file";
          path = "/srv/upstream/rules.yaml";
        };
        path = "/srv/live/rules.yaml";
        restart.none = true;
      };
    };
    extraReadWritePaths = [ "/srv/other" ];
  };
  minimalChecks =
    let
      msc = minimal.config.systemd.services.rulekeeper.serviceConfig;
    in
    [
      (checkEq "minimal: no assertions" minimal.failedAssertions [ ])
      (checkEq "minimal: no LoadCredential" msc.LoadCredential [ ])
      (checkEq "minimal: no managed units" minimal.cfg.managedUnits [ ])
      (checkEq "minimal: only the rulekeeper unit" (builtins.attrNames minimal.config.systemd.services) [ "rulekeeper" ])
      (checkEq "minimal: TimeoutStartSec from 2m 30s" msc.TimeoutStartSec "180s")
      (checkEq "minimal: ReadWritePaths" msc.ReadWritePaths [
        "/srv/live"
        "/srv/other"
      ])
      (checkEq "minimal: restart none" minimal.config.environment.etc."rulekeeper/config.yaml".source.value.targets.demo.restart { none = true; })
    ];

  # 2b. Deploy through PowerSync's API: its token is a credential, and no unit is managed.
  deployTarget = token: {
    source = {
      kind = "file";
      path = "/srv/upstream/rules.yaml";
    };
    path = "/var/lib/powersync/sync-rules.yaml";
    restart.powersync_deploy = {
      url = "http://127.0.0.1:8080";
      token_file = token;
    };
  };
  deploy = evalModule {
    enable = true;
    credentials.powersync-api-token = "/run/secrets/powersync-api-token";
    settings.targets.powersync = deployTarget "/run/credentials/rulekeeper.service/powersync-api-token";
  };
  # A target whose token file is in the Nix store fails an assertion naming `key`.
  refusesStoreToken =
    name: key: target:
    check name (
      builtins.any (lib.hasInfix key)
        (evalModule {
          enable = true;
          settings.targets.powersync = target;
        }).failedAssertions
    );
  # A reload target: its unit is ordered like a restarted one; free-form reload kinds pass.
  reload = evalModule {
    enable = true;
    settings.targets.nginx = {
      source = {
        kind = "file";
        path = "/srv/site.conf";
      };
      path = "/etc/nginx/conf.d/site.conf";
      restart.systemd_reload = "nginx.service";
      verify.none = true;
    };
    settings.targets.prom = {
      source = {
        kind = "file";
        path = "/srv/rules.yml";
      };
      path = "/etc/prometheus/rules/app.yml";
      restart.http.url = "http://127.0.0.1:9090/-/reload";
      verify = {
        none = true;
        metrics = {
          url = "http://127.0.0.1:9090/metrics";
          success = "prometheus_config_last_reload_successful";
        };
      };
    };
  };
  deployChecks = [
    (checkEq "reload: systemd_reload units are managed" reload.cfg.managedUnits [ "nginx.service" ])
    (checkEq "reload: http reload in YAML" reload.config.environment.etc."rulekeeper/config.yaml".source.value.targets.prom.restart {
      http.url = "http://127.0.0.1:9090/-/reload";
    })
    (checkEq "deploy: no assertions" deploy.failedAssertions [ ])
    (checkEq "deploy: restart in YAML" deploy.config.environment.etc."rulekeeper/config.yaml".source.value.targets.powersync.restart {
      powersync_deploy = {
        url = "http://127.0.0.1:8080";
        token_file = "/run/credentials/rulekeeper.service/powersync-api-token";
      };
    })
    (checkEq "deploy: token as a credential" deploy.config.systemd.services.rulekeeper.serviceConfig.LoadCredential [
      "powersync-api-token:/run/secrets/powersync-api-token"
    ])
    (checkEq "deploy: no managed units" deploy.cfg.managedUnits [ ])
    (refusesStoreToken "commit_status: a store token is refused" "commit_status" {
      source = {
        kind = "forgejo";
        base_url = "https://git.example.com";
        repo = "owner/app";
        path = "sync-rules.yaml";
      };
      path = "/var/lib/powersync/sync-rules.yaml";
      restart.none = true;
      commit_status.token_file = "/nix/store/00000000000000000000000000000000-status-token";
    })
    (refusesStoreToken "deploy: a store token is refused" "restart.powersync_deploy" (
      deployTarget "/nix/store/00000000000000000000000000000000-token"
    ))
  ];

  # 3. Unprivileged, validator, firewall, build-time check.
  unpriv = evalModule {
    enable = true;
    user = "rulekeeper";
    openFirewall = true;
    validateConfig = true;
    powersyncValidator = {
      enable = true;
      package = fakeDrv "my-validator";
    };
    settings = {
      listen = "0.0.0.0:9871";
      state_dir = "/srv/rulekeeper-state";
      targets.powersync = {
        source = {
          kind = "git";
          url = "ssh://forgejo@git.cloonar.com/Cloonar/fit.git";
          ref = "master";
          path = "powersync/sync-rules.yaml";
        };
        path = "/var/lib/powersync/sync-rules.yaml";
        restart.systemd = "podman-powersync.service";
        validate.command = [
          "/nix/store/00000000000000000000000000000000-my-validator/bin/rulekeeper-powersync-validate"
          "{file}"
        ];
      };
    };
  };
  unprivChecks =
    let
      u = unpriv.config;
      usc = u.systemd.services.rulekeeper.serviceConfig;
      rule = u.security.polkit.extraConfig;
    in
    [
      (checkEq "unpriv: no assertions" unpriv.failedAssertions [ ])
      (checkEq "unpriv: User" usc.User "rulekeeper")
      (checkEq "unpriv: Group" usc.Group "rulekeeper")
      (checkEq "unpriv: no capabilities" usc.CapabilityBoundingSet [ "" ])
      (check "unpriv: polkit enabled" u.security.polkit.enable)
      (check "unpriv: polkit rule names action, user, unit" (
        lib.hasInfix "org.freedesktop.systemd1.manage-units" rule
        && lib.hasInfix "\"rulekeeper\"" rule
        && lib.hasInfix "[\"podman-powersync.service\"]" rule
      ))
      # try-restart to apply; reset-failed + restart to bring a unit back on rollback.
      (check "unpriv: polkit rule allows exactly the verbs rulekeeper uses" (
        lib.hasInfix "[\"restart\", \"try-restart\", \"reset-failed\"]" rule
      ))
      (check "unpriv: system user created" u.users.users.rulekeeper.isSystemUser)
      (check "unpriv: group created" (u.users.groups ? rulekeeper))
      (checkEq "unpriv: firewall port from listen" u.networking.firewall.allowedTCPPorts [ 9871 ])
      (checkEq "unpriv: node needs W+X" usc.MemoryDenyWriteExecute false)
      (checkEq "unpriv: path has validator, git, ssh" (map (p: p.name) u.systemd.services.rulekeeper.path) [
        "my-validator"
        "git-minimal"
        "openssh"
      ])
      (checkEq "unpriv: validator command" unpriv.cfg.powersyncValidator.command [
        "/nix/store/00000000000000000000000000000000-my-validator/bin/rulekeeper-powersync-validate"
        "{file}"
      ])
      (check "unpriv: ExecStart uses the checked config" (lib.hasInfix "rulekeeper-checked.yaml" usc.ExecStart))
      (check "unpriv: the check runs `rulekeeper check -c`" (
        lib.hasInfix "rulekeeper check -c " u.environment.etc."rulekeeper/config.yaml".source.script
      ))
      (checkEq "unpriv: custom state_dir is writable" usc.ReadWritePaths [
        "/var/lib/powersync"
        "/srv/rulekeeper-state"
      ])
    ];

  # 4. Misconfigurations are caught: by the module's assertions, and by the real type system.
  bad = evalModule {
    enable = true;
    credentials.forge-token = "/nix/store/00000000000000000000000000000000-token";
    settings = {
      startup_timeout = "soon";
      targets.Bad = {
        source = {
          kind = "http";
          url = "https://example.com/rules.yaml";
          token_file = "/run/credentials/rulekeeper.service/undeclared";
        };
        path = "/srv/live/rules.yaml";
      };
    };
  };
  signed = (evalModule {
    enable = true;
    settings.targets.x = {
      source = {
        kind = "forgejo";
        base_url = "https://git.example.com";
        repo = "o/r";
        path = "rules.yaml";
        require_signature.allowed_signers = "/etc/rulekeeper/allowed_signers";
      };
      path = "/x/y";
    };
  }).config;
  signedChecks = [
    (checkEq "signed: path has ssh-keygen and gpgv" (map (p: p.name) signed.systemd.services.rulekeeper.path) [
      "openssh"
      "gnupg"
    ])
  ];
  badChecks = [
    (checkEq "bad: three assertions fail" (builtins.length bad.failedAssertions) 3)
    (check "bad: store credential rejected" (builtins.any (lib.hasInfix "outside the Nix store") bad.failedAssertions))
    (check "bad: undeclared credential named" (builtins.any (lib.hasInfix "{undeclared}") bad.failedAssertions))
    (check "bad: target name rejected" (builtins.any (lib.hasInfix "target names") bad.failedAssertions))
    (checkEq "bad: unparsable startup_timeout warns" (builtins.length bad.warnings) 1)
    (checkEq "bad: falls back to 5min" bad.config.systemd.services.rulekeeper.serviceConfig.TimeoutStartSec "5min")
    (check "bad: wrong type rejected" (fails (evalModule {
      enable = true;
      settings.targets.x = {
        source.kind = "file";
        path = "/x/y";
        restart.systemd = 5;
      };
    }).config.environment.etc))
    (check "bad: unknown source kind rejected" (fails (evalModule {
      enable = true;
      settings.targets.x = {
        source.kind = "svn";
        path = "/x/y";
      };
    }).config.environment.etc))
    (check "bad: undeclared option rejected" (fails (evalModule {
      enable = true;
      bogus = 1;
    }).config.services.rulekeeper))
    (check "bad: managedUnits is read-only" (fails (evalModule {
      enable = true;
      managedUnits = [ "x.service" ];
    }).cfg.managedUnits))
    (check "bad: validator without npmDepsHash or package throws" (fails (evalModule {
      enable = true;
      powersyncValidator.enable = true;
    }).config.systemd.services.rulekeeper.path))
    # The stubs are not so loose that anything passes: a wrong NixOS-side type is caught too.
    (check "bad: the stubs type-check as well" (fails (lib.evalModules {
      modules = [
        nixosStubs
        { networking.firewall.allowedTCPPorts = [ "http" ]; }
      ];
    }).config.networking.firewall.allowedTCPPorts))
  ];

  # 5. Disabled: the module defines nothing.
  disabled = evalModule { };
  disabledChecks = [
    (checkEq "disabled: no units" disabled.config.systemd.services { })
    (checkEq "disabled: no files" disabled.config.environment.etc { })
    (checkEq "disabled: no assertions" disabled.config.assertions [ ])
    (checkEq "disabled: no packages" disabled.config.environment.systemPackages [ ])
  ];

  allChecks = powersyncChecks ++ minimalChecks ++ deployChecks ++ unprivChecks ++ signedChecks ++ badChecks ++ disabledChecks;
in
builtins.deepSeq allChecks {
  ok = true;
  checks = builtins.length allChecks;
  passed = allChecks;
  unit = {
    inherit (sc)
      Type
      NotifyAccess
      ExecStart
      ExecReload
      WatchdogSec
      Restart
      RestartSec
      StateDirectory
      TimeoutStartSec
      LoadCredential
      ReadWritePaths
      RestrictAddressFamilies
      ;
  };
  managedUnit = managed;
  settings = settingsOut;
}
