# Non-flake entry point.
#
#   let rulekeeper = import /path/to/rulekeeper/nix { inherit pkgs; };
#   in {
#     imports = [ rulekeeper.module ];
#     services.rulekeeper.package = rulekeeper.package;  # the module's default builds the same
#   }
{
  pkgs ? import <nixpkgs> { },
}:
{
  package = pkgs.callPackage ./package.nix { };
  module = ./module.nix;
  # `nix-build nix -A tests.vm` (needs KVM for a reasonable run time).
  tests.vm = import ./tests/vm.nix { inherit pkgs; };
}
