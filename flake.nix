{
  description = "rulekeeper: keep a service's rules file in sync with git (fetch, validate, swap, restart, verify, roll back)";

  # Only nixpkgs; no other inputs. Cargo.toml's rust-version (1.89) needs a recent nixpkgs.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        rulekeeper = pkgs.callPackage ./nix/package.nix { };
        default = rulekeeper;
      });

      overlays.default = final: _prev: {
        rulekeeper = final.callPackage ./nix/package.nix { };
      };

      # The module's package defaults to pkgs.rulekeeper when an overlay provides it, else it
      # builds ./nix/package.nix against the host's nixpkgs.
      nixosModules.default = ./nix/module.nix;
      nixosModules.rulekeeper = ./nix/module.nix;

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        vm = import ./nix/tests/vm.nix {
          inherit pkgs;
          module = self.nixosModules.default;
        };
      });
    };
}
