# NixOS module: services.rulekeeper
#
# Runs `rulekeeper run -c <generated config>` as a systemd Type=notify service and orders every
# unit a target restarts (`restart.systemd`) After= + Wants= rulekeeper.service, so those units
# start from a usable rules file. See docs/nixos.md for a walk-through.
#
# Privileges. rulekeeper restarts managed units with `systemctl try-restart UNIT` and writes the
# live rules files, which usually belong to root. By default it therefore runs as root (as the
# shell oneshot it replaces did), inside a tight sandbox: the whole file system is read-only
# (ProtectSystem=strict) except its state directory and the directories of the live files
# (ReadWritePaths), no /home, private /tmp, no devices, no new privileges, only AF_UNIX (D-Bus /
# systemd's private socket for systemctl, sd_notify, journald) and AF_INET/AF_INET6.
# The capability bounding set is left alone in root mode: systemd authorises
# `systemctl try-restart` from a root caller by its CAP_SYS_ADMIN, and a root without
# capabilities cannot restart anything without polkit.
#
# To run unprivileged instead, set `user = "rulekeeper"` (or any other user): the module then
# creates the user (for "rulekeeper"), drops all capabilities and adds a polkit rule that lets
# exactly that user run restart/try-restart on exactly the managed units
# (org.freedesktop.systemd1.manage-units, filtered by `unit` and `verb`). The live files'
# directories must then be writable by that user (e.g. systemd.tmpfiles
# "d /var/lib/powersync 0755 rulekeeper root -").
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    mkMerge
    mkDefault
    types
    ;

  cfg = config.services.rulekeeper;
  format = pkgs.formats.yaml { };
  credentialDir = "/run/credentials/rulekeeper.service";

  # --- the generated config ---------------------------------------------------------------

  # Typed sub-options default to null ("let rulekeeper use its own default"); rulekeeper
  # rejects unknown keys and null is not always a valid value, so nulls are dropped.
  clean =
    v:
    if builtins.isAttrs v then
      lib.filterAttrs (n: x: x != null && n != "_module") (builtins.mapAttrs (_: clean) v)
    else if builtins.isList v then
      map clean v
    else
      v;

  settings = clean cfg.settings;

  rawConfigFile = format.generate "rulekeeper.yaml" settings;

  # Optional build-time `rulekeeper check`; off by default because the secret files the
  # config points at (/run/credentials/...) do not exist in the build sandbox.
  checkedConfigFile =
    pkgs.runCommand "rulekeeper-checked.yaml"
      {
        nativeBuildInputs = [ cfg.package ];
      }
      ''
        rulekeeper check -c ${rawConfigFile}
        ln -s ${rawConfigFile} $out
      '';

  configFile = if cfg.validateConfig then checkedConfigFile else rawConfigFile;

  targets = cfg.settings.targets;
  targetList = lib.attrValues targets;

  # Units restarted by the `systemd` restarter of some target, e.g. [ "podman-powersync.service" ].
  managedUnits = lib.unique (
    lib.concatMap (
      t:
      lib.optional (t.restart != null && t.restart.systemd or null != null) t.restart.systemd
      ++ lib.optional (
        t.restart != null && t.restart.systemd_reload or null != null
      ) t.restart.systemd_reload
    ) targetList
  );

  serviceName = u: lib.removeSuffix ".service" u;

  # Directories holding live files: rulekeeper writes a temp file there, keeps <name>.prev and
  # renames over the live file, so it needs the directory, not only the file.
  liveDirs = map (t: builtins.dirOf t.path) targetList;
  readWritePaths = lib.unique (
    liveDirs
    ++ cfg.extraReadWritePaths
    ++ lib.optional (cfg.settings.state_dir != "/var/lib/rulekeeper") cfg.settings.state_dir
  );

  usesGit = lib.any (t: (t.source.kind or null) == "git") targetList;

  # require_signature verifies with ssh-keygen (SSH) and gpgv (OpenPGP) on the unit's PATH.
  usesSignatures = lib.any (t: (t.source.require_signature or null) != null) targetList;

  # --- durations ---------------------------------------------------------------------------

  # humantime-ish "90s", "5m", "1h 30m", "1m30s" -> seconds, or null when not understood.
  durationUnits = {
    "" = 1;
    s = 1;
    sec = 1;
    secs = 1;
    second = 1;
    seconds = 1;
    m = 60;
    min = 60;
    mins = 60;
    minute = 60;
    minutes = 60;
    h = 3600;
    hr = 3600;
    hrs = 3600;
    hour = 3600;
    hours = 3600;
    d = 86400;
    day = 86400;
    days = 86400;
  };
  parseDuration =
    s:
    let
      go =
        rest: acc:
        if rest == "" then
          acc
        else
          let
            m = builtins.match "[[:space:]]*0*([0-9]+)[[:space:]]*([a-z]*)[[:space:]]*(.*)" rest;
            n = builtins.fromJSON (builtins.elemAt m 0);
            unit = builtins.elemAt m 1;
          in
          if m == null then
            null
          else if unit == "ms" || unit == "msec" then
            go (builtins.elemAt m 2) (acc + (n + 999) / 1000)
          else if durationUnits ? ${unit} then
            go (builtins.elemAt m 2) (acc + n * durationUnits.${unit})
          else
            null;
    in
    if s == null then null else go s 0;

  startupSeconds = parseDuration cfg.settings.startup_timeout;
  # startup_timeout bounds rulekeeper's own start-up retries; leave room for the final attempt
  # and shutdown. rulekeeper extends the timeout itself (EXTEND_TIMEOUT_USEC) during a slow
  # first fetch.
  timeoutStartSec = if startupSeconds == null then "5min" else "${toString (startupSeconds + 30)}s";

  # --- secrets hygiene ---------------------------------------------------------------------

  allStrings =
    v:
    if builtins.isAttrs v then
      lib.concatMap allStrings (lib.attrValues v)
    else if builtins.isList v then
      lib.concatMap allStrings v
    else if builtins.isString v then
      [ v ]
    else
      [ ];
  referencedCredentials = lib.unique (
    lib.concatMap (
      s:
      let
        m = builtins.match "${credentialDir}/([^/]+)" s;
      in
      lib.optional (m != null) (builtins.head m)
    ) (allStrings settings)
  );
  missingCredentials = lib.filter (n: !(cfg.credentials ? ${n})) referencedCredentials;

  storeDir = builtins.storeDir;

  # --- PowerSync offline validator (contrib/powersync) -----------------------------------

  validatorPackage = pkgs.buildNpmPackage {
    pname = "rulekeeper-powersync-validate";
    version = "0.0.0";
    src = lib.cleanSourceWith {
      src = ../contrib/powersync;
      filter = path: _type: baseNameOf path != "node_modules";
    };
    npmDepsHash =
      if cfg.powersyncValidator.npmDepsHash == null then
        throw ''
          services.rulekeeper.powersyncValidator: set npmDepsHash (run
          `nix run nixpkgs#prefetch-npm-deps contrib/powersync/package-lock.json`) or set
          powersyncValidator.package to your own build of contrib/powersync.''
      else
        cfg.powersyncValidator.npmDepsHash;
    inherit (cfg.powersyncValidator) nodejs;
    # Nothing to compile. The npm `node` dependency downloads a Node binary in its install
    # script; skip all scripts and run the validator on nixpkgs' nodejs instead.
    dontNpmBuild = true;
    npmFlags = [ "--ignore-scripts" ];
    npmRebuildFlags = [ "--ignore-scripts" ];
    makeWrapperArgs = [
      "--prefix"
      "PATH"
      ":"
      "${cfg.powersyncValidator.nodejs}/bin"
    ];
    meta.mainProgram = "rulekeeper-powersync-validate";
  };

  # --- option types -------------------------------------------------------------------------

  nullOrStr =
    description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      inherit description;
    };

  sourceModule = {
    freeformType = format.type;
    options.kind = mkOption {
      type = types.enum [
        "forgejo"
        "gitea"
        "github"
        "gitlab"
        "git"
        "http"
        "file"
      ];
      description = ''
        Where the rules come from. Further keys depend on the kind (freeform):
        forgejo/gitea/github/gitlab: `base_url`, `repo` ("owner/name"), `path`, `ref`,
        `token_file`; git: `url`, `ref`, `path`; http: `url`, optional `token_file` (sent as
        Bearer); file: `path`. Token files should live under
        `/run/credentials/rulekeeper.service/` (see `services.rulekeeper.credentials`).
      '';
    };
  };

  restartModule = {
    freeformType = format.type;
    options = {
      systemd = nullOrStr ''
        Unit to `systemctl try-restart` after a swap, e.g. "podman-powersync.service". The unit
        is automatically ordered After= and Wants= rulekeeper.service (see `managedUnits`).
      '';
      systemd_reload = nullOrStr ''
        Unit to `systemctl reload` after a swap (the same process takes the new file; a reload
        that became a restart fails verification). Ordered like `systemd`. Other reload kinds
        (`signal`, `http`) are free-form keys: see docs/services.md.
      '';
      command = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        description = "argv of a restart command (no shell), instead of `systemd`.";
      };
      none = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Do not restart anything.";
      };
      powersync_deploy = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              url = mkOption {
                type = types.str;
                description = "PowerSync's base URL, e.g. \"http://127.0.0.1:8080\" (https, or http to loopback).";
              };
              token_file = mkOption {
                type = types.str;
                description = ''
                  File with one of PowerSync's `api.tokens`, as a credential:
                  "/run/credentials/rulekeeper.service/powersync-api-token" with
                  `services.rulekeeper.credentials.powersync-api-token` set.
                '';
              };
            };
          }
        );
        default = null;
        description = ''
          Deploy through PowerSync's sync-rules API instead of restarting it (no outage per
          change). PowerSync's config must then have no `sync_config:` / `sync_rules:` block.
          See docs/powersync.md, "Restart or deploy".
        '';
      };
      timeout = nullOrStr "Time limit for the restart (or each deploy request), e.g. \"120s\".";
    };
  };

  verifyModule = {
    freeformType = format.type;
    options = {
      http = nullOrStr "URL polled after a restart, e.g. \"http://127.0.0.1:8080/probes/liveness\" (2xx = good).";
      command = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        description = "argv of a health check command (no shell), instead of `http`.";
      };
      none = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Do not verify.";
      };
      timeout = nullOrStr "Give up verifying after this long, e.g. \"90s\".";
      interval = nullOrStr "Time between two probes, e.g. \"2s\".";
      successes = mkOption {
        type = types.nullOr types.int;
        default = null;
        description = "Consecutive successes that make the service healthy (rulekeeper's default: 3).";
      };
    };
  };

  targetModule = {
    freeformType = format.type;
    options = {
      source = mkOption {
        type = types.submodule sourceModule;
        description = "Upstream of the rules file.";
      };
      path = mkOption {
        type = types.str;
        example = "/var/lib/powersync/sync-rules.yaml";
        description = ''
          The live rules file. Its directory is added to the unit's ReadWritePaths
          automatically and must exist (create it with systemd.tmpfiles if the service's own
          module does not).
        '';
      };
      interval = nullOrStr "Poll interval (humantime, e.g. \"5m\"); rulekeeper's default when null.";
      mode = nullOrStr "File mode of the live file, e.g. \"0640\"; when null the replaced file keeps its mode (a new file gets 0644).";
      owner = nullOrStr "Owner of the live file (a user name or uid); when null the replaced file keeps its owner (a new file gets its directory's).";
      group = nullOrStr "Group of the live file (a group name or gid); when null the replaced file keeps its group (a new file gets its directory's).";
      create_dirs = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Create every missing parent of the live file's directory (rulekeeper creates only the last one by default).";
      };
      max_bytes = mkOption {
        type = types.nullOr types.int;
        default = null;
        description = "Size cap of the fetched file (rulekeeper's default: 1 MiB).";
      };
      validate = mkOption {
        type = types.nullOr format.type;
        default = null;
        example = lib.literalExpression ''
          {
            yaml = true;
            require_keys = [ "bucket_definitions" ];
            command = config.services.rulekeeper.powersyncValidator.command;
            timeout = "60s";
          }
        '';
        description = "Validation of a candidate: `yaml`, `require_keys`, `command` (argv, `{file}` is replaced), `timeout`.";
      };
      restart = mkOption {
        type = types.nullOr (types.submodule restartModule);
        default = null;
        description = "How to restart the service after a swap.";
      };
      verify = mkOption {
        type = types.nullOr (types.submodule verifyModule);
        default = null;
        description = "How to decide the restarted service is healthy.";
      };
      webhook = mkOption {
        type = types.nullOr format.type;
        default = null;
        example = {
          secret_file = "/run/credentials/rulekeeper.service/webhook-secret";
        };
        description = "Webhook settings for `POST /hooks/<target>`: `secret_file`.";
      };
    };
  };

  settingsModule = {
    freeformType = format.type;
    options = {
      listen = mkOption {
        type = types.str;
        default = "127.0.0.1:9871";
        description = "Address of /metrics, /healthz, /status and /hooks/<target>.";
      };
      state_dir = mkOption {
        type = types.str;
        default = "/var/lib/rulekeeper";
        description = "State, locks and git caches. The default is the unit's StateDirectory.";
      };
      startup_timeout = mkOption {
        type = types.str;
        default = "60s";
        description = ''
          How long start-up retries when a target has no usable file. The unit's
          TimeoutStartSec is derived from it (+30s).
        '';
      };
      targets = mkOption {
        type = types.attrsOf (types.submodule targetModule);
        default = { };
        description = "Targets by name ([a-z0-9_-]+). Keys not declared here are passed through as-is.";
      };
    };
  };
in
{
  options.services.rulekeeper = {
    enable = mkEnableOption "rulekeeper, which keeps a service's rules file in sync with git";

    package = mkOption {
      type = types.package;
      default = pkgs.rulekeeper or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.rulekeeper or (pkgs.callPackage ./package.nix { })";
      description = "The rulekeeper package.";
    };

    settings = mkOption {
      type = types.submodule settingsModule;
      default = { };
      description = ''
        rulekeeper's configuration (see docs/contract.md / docs/configuration.md), rendered to YAML.
        Options set to null are left out. Never put secrets here: the file lands in the world
        readable Nix store. Point `token_file` / `secret_file` at
        `/run/credentials/rulekeeper.service/<name>` and declare `<name>` in `credentials`.
      '';
    };

    credentials = mkOption {
      # A string, not a path: a Nix path literal (./token) would be copied into the store.
      type = types.attrsOf types.str;
      default = { };
      example = {
        forge-token = "/run/secrets/reptide-powersync-syncrules-token";
        webhook-secret = "/run/secrets/rulekeeper-webhook-secret";
      };
      description = ''
        Secret files handed to the service with systemd's LoadCredential= (name -> absolute host
        path, e.g. a sops-nix secret). The service reads them as
        `/run/credentials/rulekeeper.service/<name>`; they never enter the Nix store.
      '';
    };

    extraReadWritePaths = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/var/lib/powersync" ];
      description = ''
        Extra directories the sandboxed service may write. The directories of every target's
        `path` are already included.
      '';
    };

    managedUnits = mkOption {
      type = types.listOf types.str;
      readOnly = true;
      default = managedUnits;
      defaultText = lib.literalMD "the `restart.systemd` units of all targets";
      description = ''
        Units rulekeeper restarts (derived from the targets' `restart.systemd`). Each one gets
        `after` and `wants` rulekeeper.service (not `requires`: a failed rulekeeper must not
        stop the service, which then starts from its persisted file).
      '';
    };

    configFile = mkOption {
      type = types.str;
      readOnly = true;
      default = "${configFile}";
      defaultText = lib.literalMD "the YAML rendered from `settings`";
      description = "The generated config file (also linked to /etc/rulekeeper/config.yaml for the CLI).";
    };

    validateConfig = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run `rulekeeper check -c` on the generated file at build time. Off by default: a check
        that opens the credential files fails in the build sandbox.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "root";
      description = ''
        User the service runs as. "root" (default) can `systemctl try-restart` any unit and
        write root-owned live files. Any other user runs without capabilities and gets a
        polkit rule allowing restart/try-restart of exactly `managedUnits`; "rulekeeper" is
        created automatically.
      '';
    };

    group = mkOption {
      type = types.str;
      default = if cfg.user == "root" then "root" else cfg.user;
      defaultText = lib.literalExpression ''if user == "root" then "root" else user'';
      description = "Group the service runs as.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the TCP port of `settings.listen` (only useful when it is not a loopback address;
        prefer scraping over loopback or a reverse proxy for webhooks).
      '';
    };

    powersyncValidator = {
      enable = mkEnableOption ''
        the offline PowerSync sync-rules validator (contrib/powersync, Node.js). Use
        `config.services.rulekeeper.powersyncValidator.command` as a target's
        `validate.command`'';

      nodejs = mkOption {
        type = types.package;
        default = pkgs.nodejs_22;
        defaultText = lib.literalExpression "pkgs.nodejs_22";
        description = "Node.js that runs the validator (`streams:` files need Node 21 or newer).";
      };

      npmDepsHash = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        description = ''
          Hash of contrib/powersync's npm dependencies for buildNpmPackage
          (`prefetch-npm-deps contrib/powersync/package-lock.json`). Needed only when
          `package` is left at its default.
        '';
      };

      package = mkOption {
        type = types.package;
        default = validatorPackage;
        defaultText = lib.literalMD "contrib/powersync built with buildNpmPackage (needs `npmDepsHash`)";
        description = "Package providing bin/rulekeeper-powersync-validate.";
      };

      command = mkOption {
        type = types.listOf types.str;
        default = [
          "${cfg.powersyncValidator.package}/bin/rulekeeper-powersync-validate"
          "{file}"
        ];
        defaultText = lib.literalExpression ''[ "''${package}/bin/rulekeeper-powersync-validate" "{file}" ]'';
        description = "argv to use as a target's `validate.command`.";
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = lib.all (p: lib.hasPrefix "/" p && !(lib.hasPrefix "${storeDir}/" p)) (
            lib.attrValues cfg.credentials
          );
          message = "services.rulekeeper.credentials: every value must be an absolute path outside the Nix store (e.g. a sops-nix secret under /run/secrets).";
        }
        {
          assertion = lib.all (n: builtins.match "[A-Za-z0-9_.@-]+" n != null) (lib.attrNames cfg.credentials);
          message = "services.rulekeeper.credentials: names may only contain letters, digits and _ . @ -";
        }
        {
          assertion = missingCredentials == [ ];
          message = "services.rulekeeper.settings references ${credentialDir}/{${lib.concatStringsSep "," missingCredentials}} but services.rulekeeper.credentials does not declare them.";
        }
        {
          assertion = lib.all (n: builtins.match "[a-z0-9_-]+" n != null) (lib.attrNames targets);
          message = "services.rulekeeper.settings.targets: target names must match [a-z0-9_-]+.";
        }
        {
          assertion = lib.all (s: !(lib.hasPrefix "${storeDir}/" s)) (
            lib.concatMap (
              t:
              lib.optional (t.source ? token_file) t.source.token_file
              ++ lib.optional (t.webhook != null && t.webhook ? secret_file) t.webhook.secret_file
              ++ lib.optional (t ? gate && t.gate ? token_file) t.gate.token_file
              ++ lib.optional (
                t.restart != null && t.restart.powersync_deploy or null != null
              ) t.restart.powersync_deploy.token_file
              ++ lib.optional (t ? commit_status && t.commit_status ? token_file) t.commit_status.token_file
            ) targetList
          );
          message = "services.rulekeeper: token_file / secret_file (source, webhook, gate, restart.powersync_deploy, commit_status) must not point into the Nix store (it is world readable); use services.rulekeeper.credentials.";
        }
      ];

      warnings = lib.optional (startupSeconds == null) "services.rulekeeper.settings.startup_timeout = \"${cfg.settings.startup_timeout}\" is not understood by the module; TimeoutStartSec falls back to 5min.";

      environment.systemPackages = [ cfg.package ];
      # For the CLI: `rulekeeper status -c /etc/rulekeeper/config.yaml`.
      environment.etc."rulekeeper/config.yaml".source = configFile;

      systemd.services = mkMerge [
        {
          rulekeeper = {
            description = "rulekeeper: keep rules files in sync with git";
            wantedBy = [ "multi-user.target" ];
            wants = [ "network-online.target" ];
            after = [ "network-online.target" ];
            path = lib.unique (
              lib.optional cfg.powersyncValidator.enable cfg.powersyncValidator.package
              ++ lib.optionals usesGit [
                pkgs.gitMinimal
                pkgs.openssh
              ]
              ++ lib.optionals usesSignatures [
                pkgs.openssh
                pkgs.gnupg
              ]
            );

            serviceConfig = {
              Type = "notify";
              NotifyAccess = "main";
              ExecStart = "${cfg.package}/bin/rulekeeper run -c ${configFile}";
              ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
              WatchdogSec = "60s";
              Restart = "on-failure";
              RestartSec = "5s";
              TimeoutStartSec = mkDefault timeoutStartSec;
              # Lets an in-flight cycle (restart + verify) finish after STOPPING=1.
              TimeoutStopSec = mkDefault "3min";

              User = cfg.user;
              Group = cfg.group;
              StateDirectory = "rulekeeper";
              StateDirectoryMode = "0750";
              LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;
              ReadWritePaths = readWritePaths;
              # rulekeeper sets the live file's mode itself (kept from the file it replaces, or
              # `mode`); the umask only shapes directories it creates.
              UMask = mkDefault "0022";

              # Hardening, after the nixpkgs prometheus exporters baseline.
              ProtectSystem = mkDefault "strict";
              ProtectHome = mkDefault true;
              PrivateTmp = mkDefault true;
              PrivateDevices = mkDefault true;
              NoNewPrivileges = mkDefault true;
              ProtectClock = mkDefault true;
              ProtectControlGroups = mkDefault true;
              ProtectHostname = mkDefault true;
              ProtectKernelLogs = mkDefault true;
              ProtectKernelModules = mkDefault true;
              ProtectKernelTunables = mkDefault true;
              RestrictNamespaces = mkDefault true;
              RestrictRealtime = mkDefault true;
              RestrictSUIDSGID = mkDefault true;
              LockPersonality = mkDefault true;
              RemoveIPC = mkDefault true;
              # Node's JIT (the PowerSync validator) needs W+X memory.
              MemoryDenyWriteExecute = mkDefault (!cfg.powersyncValidator.enable);
              SystemCallArchitectures = mkDefault "native";
              SystemCallFilter = mkDefault [ "@system-service" ];
              SystemCallErrorNumber = mkDefault "EPERM";
              # AF_UNIX: systemctl -> systemd (D-Bus / private socket), sd_notify, journald.
              RestrictAddressFamilies = mkDefault [
                "AF_UNIX"
                "AF_INET"
                "AF_INET6"
              ];
            }
            // lib.optionalAttrs (cfg.user != "root") {
              CapabilityBoundingSet = mkDefault [ "" ];
              AmbientCapabilities = mkDefault [ "" ];
            };
          };
        }
        # Managed units start after rulekeeper has a usable file (READY=1). Wants, not
        # Requires: when rulekeeper fails, the service still starts from its persisted file.
        (lib.listToAttrs (
          map (
            u:
            lib.nameValuePair (serviceName u) {
              after = [ "rulekeeper.service" ];
              wants = [ "rulekeeper.service" ];
            }
          ) managedUnits
        ))
      ];
    }

    (mkIf cfg.openFirewall {
      networking.firewall.allowedTCPPorts = [
        (builtins.fromJSON (lib.last (lib.splitString ":" cfg.settings.listen)))
      ];
    })

    (mkIf (cfg.user != "root") {
      security.polkit.enable = true;
      security.polkit.extraConfig = ''
        // rulekeeper: let ${cfg.user} restart the units it manages, and nothing else:
        // try-restart to apply new rules; reset-failed + restart to bring a unit that bad
        // rules killed back up on the last good file.
        polkit.addRule(function(action, subject) {
          if (action.id == "org.freedesktop.systemd1.manage-units" &&
              subject.user == ${builtins.toJSON cfg.user} &&
              ${builtins.toJSON managedUnits}.indexOf(action.lookup("unit")) >= 0 &&
              ["restart", "try-restart", "reset-failed"].indexOf(action.lookup("verb")) >= 0) {
            return polkit.Result.YES;
          }
        });
      '';
    })

    (mkIf (cfg.user == "rulekeeper") {
      users.users.rulekeeper = {
        isSystemUser = true;
        group = cfg.group;
        description = "rulekeeper daemon";
      };
      users.groups = mkIf (cfg.group == "rulekeeper") { rulekeeper = { }; };
    })
  ]);
}
