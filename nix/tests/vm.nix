# NixOS VM test: the module end to end under systemd.
#
#   nix flake check                      # or: nix build .#checks.x86_64-linux.vm
#   nix-build nix -A tests.vm            # without flakes
#
# One machine. A `file` source (/srv/upstream/rules.yaml) plays the forge; `dummy.service`
# (python's http.server serving the live file's directory on 127.0.0.1:8080) plays
# PowerSync: it is the managed unit (restart.systemd) and the verify probe.
{
  pkgs ? import <nixpkgs> { },
  module ? ../module.nix,
}:

let
  rulesV1 = pkgs.writeText "rules-v1.yaml" ''
    bucket_definitions:
      global:
        data:
          - SELECT * FROM lists
  '';
in
pkgs.testers.runNixOSTest {
  name = "rulekeeper";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ module ];

      environment.systemPackages = [ pkgs.curl ];

      # The "upstream" (copied, so the test can edit it) and the live directory.
      systemd.tmpfiles.rules = [
        "d /srv/upstream 0755 root root -"
        "C /srv/upstream/rules.yaml 0644 root root - ${rulesV1}"
        "d /var/lib/dummy 0755 root root -"
      ];
      # Not a store path: the module refuses secrets in the store.
      environment.etc."rulekeeper-test/webhook-secret".text = "s3cret";

      systemd.services.dummy = {
        description = "stand-in for podman-powersync";
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server 8080 --bind 127.0.0.1 --directory /var/lib/dummy";
      };

      services.rulekeeper = {
        enable = true;
        credentials.webhook-secret = "/etc/rulekeeper-test/webhook-secret";
        settings = {
          startup_timeout = "30s";
          targets.demo = {
            source = {
              kind = "file";
              path = "/srv/upstream/rules.yaml";
            };
            path = "/var/lib/dummy/rules.yaml";
            mode = "0644";
            interval = "5s";
            validate = {
              yaml = true;
              require_keys = [ "bucket_definitions" ];
            };
            restart = {
              systemd = "dummy.service";
              timeout = "30s";
            };
            verify = {
              http = "http://127.0.0.1:8080/rules.yaml";
              timeout = "30s";
              interval = "1s";
              successes = 2;
            };
            webhook.secret_file = "/run/credentials/rulekeeper.service/webhook-secret";
          };
        };
      };
    };

  testScript = ''
    start_all()
    machine.wait_for_unit("rulekeeper.service")
    machine.wait_for_unit("dummy.service")

    with subtest("the live file appears and equals upstream"):
        machine.succeed("test -f /var/lib/dummy/rules.yaml")
        machine.succeed("cmp /srv/upstream/rules.yaml /var/lib/dummy/rules.yaml")

    with subtest("metrics"):
        machine.wait_until_succeeds(
            "curl -sf http://127.0.0.1:9871/metrics | grep -q rulekeeper_rules_info", timeout=60
        )
        machine.succeed("curl -sf http://127.0.0.1:9871/healthz")

    with subtest("unit ordering: After= and Wants=, not Requires="):
        machine.succeed("systemctl show -p After dummy.service | grep -q rulekeeper.service")
        machine.succeed("systemctl show -p Wants dummy.service | grep -q rulekeeper.service")
        machine.fail("systemctl show -p Requires dummy.service | grep -q rulekeeper.service")
        machine.succeed("systemctl show -p Type rulekeeper.service | grep -qx Type=notify")

    with subtest("new upstream content is applied and the managed unit restarted"):
        before = machine.succeed("systemctl show -p InvocationID --value dummy.service").strip()
        machine.succeed(
            "printf 'bucket_definitions:\\n  global:\\n    data:\\n      - SELECT * FROM todos\\n' > /srv/upstream/rules.yaml"
        )
        machine.wait_until_succeeds("cmp /srv/upstream/rules.yaml /var/lib/dummy/rules.yaml", timeout=60)
        machine.succeed("test -f /var/lib/dummy/rules.yaml.prev")
        machine.wait_until_succeeds(
            f"test \"$(systemctl show -p InvocationID --value dummy.service)\" != '{before}'", timeout=60
        )
        sha = machine.succeed("sha256sum /var/lib/dummy/rules.yaml | cut -d' ' -f1").strip()
        machine.wait_until_succeeds(
            f"curl -sf http://127.0.0.1:9871/metrics | grep rulekeeper_rules_info | grep -q {sha}", timeout=60
        )

    with subtest("invalid upstream content is rejected; the live file stays"):
        good = machine.succeed("cat /var/lib/dummy/rules.yaml")
        machine.succeed("printf 'not_rules: true\\n' > /srv/upstream/rules.yaml")
        machine.wait_until_succeeds(
            "curl -sf http://127.0.0.1:9871/metrics | grep 'rulekeeper_cycles_total' | grep -q 'outcome=\"rejected\"'",
            timeout=60,
        )
        assert machine.succeed("cat /var/lib/dummy/rules.yaml") == good

    with subtest("webhook authentication"):
        machine.succeed("test \"$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:9871/hooks/demo)\" = 401")
        machine.succeed(
            "test \"$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer s3cret' http://127.0.0.1:9871/hooks/demo)\" = 202"
        )

    with subtest("reload and restart of rulekeeper do not restart the managed unit"):
        before = machine.succeed("systemctl show -p InvocationID --value dummy.service").strip()
        machine.succeed("systemctl reload rulekeeper.service")
        machine.succeed("systemctl restart rulekeeper.service")
        machine.wait_for_unit("rulekeeper.service")
        machine.sleep(10)
        after = machine.succeed("systemctl show -p InvocationID --value dummy.service").strip()
        assert before == after, f"dummy.service was restarted: {before} -> {after}"
  '';
}
