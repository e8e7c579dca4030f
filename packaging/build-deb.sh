#!/usr/bin/env bash
# Build the vmpilot .deb and print its path (the only line on stdout; progress goes to stderr).
#
#   packaging/build-deb.sh            # from anywhere; honours CARGO_TARGET_DIR
#   VMPILOT_DEB_PROFILE=dev packaging/build-deb.sh
#                                     # package the debug build instead (CI's install test:
#                                     # reuses `cargo test`'s build instead of a second,
#                                     # release build; never ship that package)
#   VMPILOT_DEB_FEATURES=fault-injection  (dev only) build with the cargo features the
#                                     # caller's `cargo test` used, so the binaries in
#                                     # target/debug that other tests run are not rebuilt
#                                     # with different features under their feet
#
# Steps (each timed on stderr):
#   1. cargo-deb: installed with `cargo install cargo-deb --locked` (pinned version) if
#      `cargo deb` is missing;
#   2. `cargo build --release --locked --workspace --bin ...` for the binaries the package ships;
#   3. man pages (`vmpilot generate man`, gzipped) and bash/zsh/fish completions
#      (`vmpilot generate SHELL`) into target/assets/ beside Cargo.toml, where the
#      [package.metadata.deb] assets expect them;
#   4. `cargo deb --no-build` -> $CARGO_TARGET_DIR/debian/vmpilot_<version>-1_<arch>.deb.
#
# Needs: a Rust toolchain, the build dependencies of vmpilot itself (libvirt-dev, pkg-config,
# a C compiler), and dpkg-dev (dpkg-shlibdeps computes the package's Depends:).
# Exit status: 0 built; 1 a step failed (its output is above).
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
profile=${VMPILOT_DEB_PROFILE:-release}
case "$profile" in
  release) profile_dir=release; build_flags=(--release) ;;
  dev) profile_dir=debug; build_flags=() ;;
  *) echo "build-deb: VMPILOT_DEB_PROFILE must be release or dev, not '$profile'" >&2; exit 1 ;;
esac
if [ -n "${VMPILOT_DEB_FEATURES:-}" ]; then
  [ "$profile" = dev ] || {
    echo "build-deb: VMPILOT_DEB_FEATURES is for VMPILOT_DEB_PROFILE=dev only (a shipped package has no test features)" >&2
    exit 1
  }
  build_flags+=(--features "$VMPILOT_DEB_FEATURES")
fi

cd "$(dirname "$0")/.."
repo=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

log() { echo "build-deb: $*" >&2; }
die() { log "error: $*"; exit 1; }
step_start=0
begin() { step_start=$SECONDS; log "$1 ..."; }
done_() { log "$1 took $((SECONDS - step_start)) s"; }

command -v cargo >/dev/null || die "cargo not found in PATH"
command -v dpkg-shlibdeps >/dev/null || die "dpkg-shlibdeps not found: apt-get install dpkg-dev"
command -v gzip >/dev/null || die "gzip not found"

# 1. cargo-deb
if cargo deb --version >/dev/null 2>&1; then
  log "using $(cargo deb --version 2>&1 | head -n1)"
else
  begin "installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2
  done_ "cargo install cargo-deb"
fi

# Where cargo puts build products (CARGO_TARGET_DIR, .cargo/config, or ./target).
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cannot find cargo's target directory"

# 2. build the binaries the package ships (the target/release/ assets in Cargo.toml), not
# development tools that may live in src/bin too
bins=$(sed -n 's#^ *\["target/release/\([A-Za-z0-9_-]*\)".*#\1#p' Cargo.toml)
[ -n "$bins" ] || die "no target/release/ assets in Cargo.toml [package.metadata.deb]"
bin_args=()
for b in $bins; do bin_args+=(--bin "$b"); done
begin "cargo build ${build_flags[*]} --locked --workspace ${bin_args[*]}"
cargo build "${build_flags[@]}" --locked --workspace "${bin_args[@]}" >&2
done_ "$profile build"
bin=$target_dir/$profile_dir/vmpilot
[ -x "$bin" ] || die "$bin was not built"

# 3. generated assets, always fresh (a stale man page would document another version)
begin "generating man pages and completions"
assets=$repo/target/assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" generate man --out "$assets/man"
ls "$assets"/man/*.1 >/dev/null 2>&1 || die "vmpilot generate man wrote no page"
gzip -9 -n -f "$assets"/man/*.1
"$bin" generate bash >"$assets/completions/vmpilot.bash"
"$bin" generate zsh >"$assets/completions/_vmpilot"
"$bin" generate fish >"$assets/completions/vmpilot.fish"
for f in "$assets"/completions/*; do [ -s "$f" ] || die "empty completion file $f"; done
done_ "assets ($(ls "$assets/man" | wc -l) man pages)"

# 4. package
begin "cargo deb --no-build"
out=$(cargo deb --no-build --locked --profile "$profile" 2> >(cat >&2))
done_ "cargo deb"
deb=$(printf '%s\n' "$out" | grep '\.deb$' | tail -n1)
[ -n "$deb" ] && [ -f "$deb" ] || die "cargo deb printed no .deb path (got: $out)"
log "built $deb ($(du -h "$deb" | cut -f1))"
echo "$deb"
