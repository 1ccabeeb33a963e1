# Evaluation test for nix/module.nix and nix/package.nix that needs NO nixpkgs:
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix
#
# It carries a stub `lib` (just what the module uses), a stub `pkgs` (fake derivations;
# nothing is built or copied to the store) and a tiny module evaluator that
#   - applies option defaults, type-checks definitions (str, int, bool, enum, nullOr, listOf,
#     attrsOf, submodule with freeformType) and rejects undeclared options and definitions of
#     readOnly options;
#   - resolves mkIf / mkMerge / mkDefault in the module's `config` (lists concatenate,
#     attribute sets merge, differing scalars are a conflict);
#   - evaluates `assertions`.
# It then checks the generated systemd unit, the generated YAML and the package expression.
# Any failed check throws ("eval test FAILED: ..."), so the command exits non-zero; on success
# it prints a JSON summary with "ok": true.
let
  # --- stub lib --------------------------------------------------------------------------

  lib = rec {
    inherit (builtins)
      attrNames
      attrValues
      concatStringsSep
      elem
      filter
      head
      isAttrs
      isList
      isString
      listToAttrs
      mapAttrs
      ;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption {
      type = types.bool;
      default = false;
      description = "Whether to enable ${name}.";
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    literalMD = text: {
      _type = "literalMD";
      inherit text;
    };

    types = {
      str = {
        name = "str";
        check = builtins.isString;
      };
      bool = {
        name = "bool";
        check = builtins.isBool;
      };
      int = {
        name = "int";
        check = builtins.isInt;
      };
      package = {
        name = "package";
        check = v: builtins.isAttrs v || builtins.isString v;
      };
      anything = {
        name = "anything";
        check = _: true;
      };
      enum = values: {
        name = "enum";
        check = v: builtins.elem v values;
      };
      nullOr = elemType: {
        name = "nullOr";
        inherit elemType;
      };
      listOf = elemType: {
        name = "listOf";
        inherit elemType;
      };
      attrsOf = elemType: {
        name = "attrsOf";
        inherit elemType;
      };
      submodule = module: {
        name = "submodule";
        inherit module;
      };
    };

    filterAttrs =
      pred: set:
      builtins.listToAttrs (
        builtins.concatMap (
          n:
          if pred n set.${n} then
            [
              {
                name = n;
                value = set.${n};
              }
            ]
          else
            [ ]
        ) (builtins.attrNames set)
      );
    mapAttrsToList = f: set: map (n: f n set.${n}) (builtins.attrNames set);
    nameValuePair = name: value: { inherit name value; };
    concatMap = builtins.concatMap;
    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    optionalAttrs = cond: set: if cond then set else { };
    optionalString = cond: s: if cond then s else "";
    any = builtins.any;
    all = builtins.all;
    foldl' = builtins.foldl';
    unique = foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];
    hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;
    hasSuffix =
      suf: s:
      let
        ls = builtins.stringLength s;
        lf = builtins.stringLength suf;
      in
      ls >= lf && builtins.substring (ls - lf) lf s == suf;
    hasInfix =
      infix: s:
      let
        li = builtins.stringLength infix;
        go = i: i + li <= builtins.stringLength s && (builtins.substring i li s == infix || go (i + 1));
      in
      go 0;
    escapeRegex = builtins.replaceStrings
      [ "\\" "[" "{" "(" ")" "^" "$" "?" "*" "+" "|" "." ]
      [ "\\\\" "\\[" "\\{" "\\(" "\\)" "\\^" "\\$" "\\?" "\\*" "\\+" "\\|" "\\." ];
    removeSuffix =
      suf: s:
      if hasSuffix suf s then
        builtins.substring 0 (builtins.stringLength s - builtins.stringLength suf) s
      else
        s;
    splitString = sep: s: builtins.filter builtins.isString (builtins.split (escapeRegex sep) s);
    last = xs: builtins.elemAt xs (builtins.length xs - 1);
    cleanSourceWith = args: args;
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    fileset = {
      toSource = args: args // { _type = "fileset-source"; };
      unions = xs: xs;
    };
    licenses = {
      mit = "mit";
      asl20 = "asl20";
    };
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };

  # --- stub pkgs --------------------------------------------------------------------------

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  pkgs = rec {
    inherit lib;
    formats.yaml = _: {
      type = lib.types.anything;
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
  };

  # --- tiny module evaluator --------------------------------------------------------------

  isOption = v: builtins.isAttrs v && (v._type or null) == "option";
  isLeafAttrs = v: (v.type or null) == "derivation" || v ? _type;

  applyType =
    path: type: v:
    if type.name == "submodule" then
      if !builtins.isAttrs v then
        throw "${path}: expected a submodule (attribute set), got ${builtins.typeOf v}"
      else
        applyTree path (type.module.options or { }) (type.module ? freeformType) v
    else if type.name == "attrsOf" then
      if !builtins.isAttrs v then
        throw "${path}: expected an attribute set"
      else
        builtins.mapAttrs (n: applyType "${path}.${n}" type.elemType) v
    else if type.name == "listOf" then
      if !builtins.isList v then
        throw "${path}: expected a list"
      else
        map (applyType "${path}.[]" type.elemType) v
    else if type.name == "nullOr" then
      if v == null then null else applyType path type.elemType v
    else if type.check v then
      v
    else
      throw "${path}: not a valid ${type.name}: ${builtins.toJSON v}";

  applyOption =
    path: opt: defined: v:
    if defined && (opt.readOnly or false) then
      throw "${path}: is read-only and cannot be set"
    else if defined then
      applyType path opt.type v
    else if opt ? default then
      applyType path opt.type opt.default
    else
      throw "${path}: used but not defined";

  applyTree =
    path: tree: freeform: v:
    let
      undeclared = builtins.filter (n: !(tree ? ${n})) (builtins.attrNames v);
      declared = builtins.mapAttrs (
        n: o:
        if isOption o then
          applyOption "${path}.${n}" o (v ? ${n}) (v.${n} or null)
        else
          applyTree "${path}.${n}" o false (v.${n} or { })
      ) tree;
    in
    if !freeform && undeclared != [ ] then
      throw "${path}: undeclared option(s): ${builtins.concatStringsSep ", " undeclared}"
    else
      v // declared;

  empty = {
    _type = "empty";
  };
  isEmpty = v: builtins.isAttrs v && (v._type or null) == "empty";

  mergeValues =
    path: a: b:
    if isEmpty a then
      b
    else if isEmpty b then
      a
    else if builtins.isList a && builtins.isList b then
      a ++ b
    else if builtins.isAttrs a && builtins.isAttrs b && !isLeafAttrs a && !isLeafAttrs b then
      builtins.zipAttrsWith (
        n: vs: builtins.foldl' (mergeValues "${path}.${n}") empty vs
      ) [ a b ]
    else if a == b then
      a
    else
      throw "${path}: conflicting definitions ${builtins.toJSON a} and ${builtins.toJSON b}";

  resolve =
    path: v:
    if !builtins.isAttrs v then
      v
    else if (v._type or null) == "if" then
      (if v.condition then resolve path v.content else empty)
    else if (v._type or null) == "merge" then
      builtins.foldl' (mergeValues path) empty (map (resolve path) v.contents)
    else if (v._type or null) == "override" then
      resolve path v.content
    else if isLeafAttrs v then
      v
    else
      lib.filterAttrs (_: x: !isEmpty x) (builtins.mapAttrs (n: resolve "${path}.${n}") v);

  module = import ../module.nix;

  evalModule =
    userCfg:
    let
      out = module {
        inherit lib pkgs;
        config = {
          services.rulekeeper = cfg;
        };
      };
      cfg = applyTree "services.rulekeeper" out.options.services.rulekeeper false userCfg;
      resolved = resolve "config" out.config;
      config = if isEmpty resolved then { } else resolved;
    in
    {
      inherit cfg config;
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) (config.assertions or [ ]));
      warnings = config.warnings or [ ];
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
  managed = ps.systemd.services.podman-powersync;
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
    (check "firewall untouched" (!(ps ? networking)))
    (check "no polkit, no users for root" (!(ps ? security) && !(ps ? users)))
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
    (checkEq "version from Cargo.toml" pkg.args.version "0.1.0")
    (check "cargoLock.lockFile = ../Cargo.lock" (lib.hasSuffix "/Cargo.lock" (toString pkg.args.cargoLock.lockFile)))
    (checkEq "doCheck = false" pkg.args.doCheck false)
    (check "completions installed" (lib.hasInfix "rulekeeper completions bash" pkg.args.postInstall
      && lib.hasInfix "completions zsh" pkg.args.postInstall
      && lib.hasInfix "completions fish" pkg.args.postInstall))
    (check "man page installed" (lib.hasInfix "rulekeeper man > rulekeeper.1" pkg.args.postInstall
      && lib.hasInfix "installManPage" pkg.args.postInstall))
    (checkEq "mainProgram" pkg.args.meta.mainProgram "rulekeeper")
    (check "src is a fileset of the repo" (pkg.args.src._type == "fileset-source"))
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
      (check "unpriv: polkit rule names action, user, unit, verbs" (
        lib.hasInfix "org.freedesktop.systemd1.manage-units" rule
        && lib.hasInfix "\"rulekeeper\"" rule
        && lib.hasInfix "[\"podman-powersync.service\"]" rule
        && lib.hasInfix "\"try-restart\"" rule
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

  # 4. Misconfigurations are caught.
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
    }).config))
    (check "bad: unknown source kind rejected" (fails (evalModule {
      enable = true;
      settings.targets.x = {
        source.kind = "svn";
        path = "/x/y";
      };
    }).config))
    (check "bad: undeclared top-level option rejected" (fails (evalModule {
      enable = true;
      bogus = 1;
    }).config))
    (check "bad: managedUnits is read-only" (fails (evalModule {
      enable = true;
      managedUnits = [ "x.service" ];
    }).cfg.managedUnits))
    (check "bad: validator without npmDepsHash or package throws" (fails (evalModule {
      enable = true;
      powersyncValidator.enable = true;
    }).config.systemd.services.rulekeeper.path))
  ];

  # 5. Disabled: nothing at all.
  disabled = evalModule { };
  disabledChecks = [
    (checkEq "disabled: no config" disabled.config { })
  ];

  allChecks = powersyncChecks ++ minimalChecks ++ unprivChecks ++ badChecks ++ disabledChecks;
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
