#!/usr/bin/env bash
# Builds the release binaries and both packages:
#     target/packages/lancached_<version>-1_<arch>.deb      (cargo-deb)
#     target/packages/lancached-<version>-1.<arch>.rpm      (cargo-generate-rpm)
# from [package.metadata.deb] / [package.metadata.generate-rpm] in Cargo.toml. Versions come
# from Cargo.toml. Installs the two cargo tools (pinned, --locked) when they are missing.
#
# Everything that is not a binary or a file kept in git (man pages and shell completions rendered
# from the clap definitions, the docs, the client scripts) is staged first under
# target/package-assets/{deb,rpm}/ as the tree it will have on the target system; each package
# takes that tree with one glob. To ship another file, add it to the staging below: no change to
# Cargo.toml is needed.
#
#   scripts/package.sh              build natively (CI builds aarch64 on a native arm runner)
#   PROFILE=dev scripts/package.sh  package debug binaries (quick iteration on packaging only)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

# Client-side scripts (side-loading a model from the cache into a client's Ollama), shipped under
# /usr/share/lancached/clients/ when they exist in scripts/; the daemon's packages carry them so
# an administrator can hand them out. Add new ones here.
CLIENT_SCRIPTS=(scripts/install.sh scripts/install.ps1 scripts/setup.sh scripts/setup.ps1)

need_tool() { # <cargo subcommand> <crate> <version>
  if ! cargo "$1" --version >/dev/null 2>&1; then
    echo "package: installing $2 $3" >&2
    cargo install --locked "$2" --version "$3"
  fi
}
need_tool deb cargo-deb "$CARGO_DEB_VERSION"
need_tool generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

profile=${PROFILE:-release}
cargo build --profile "$profile" --locked --workspace --bins
bin=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")

version=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="lancached"))')

# --- Stage the generated and documentation assets -------------------------------------------
stage=target/package-assets
rm -rf "$stage"
# Stripped copies for the .rpm (cargo-deb strips its own copy of target/release/*; rpm has no
# brp-strip here, and the release profile keeps symbols for profiling).
install -d "$stage/bin"
for b in lancached lancachectl; do
  strip --strip-unneeded -o "$stage/bin/$b" "$bin/$b"
done
gen="$stage/generated"
"$bin/lancached" --generate-assets "$gen"
"$bin/lancachectl" generate-assets "$gen"

# stage_tree <doc root> <data root> <zsh completion dir>: the tree both formats share, but for
# where each distribution's zsh looks for vendor completions. Documentation (man pages, docs)
# and data (completions, client scripts) may go to separate roots: the .rpm marks the former
# %doc.
stage_tree() {
  local docroot=$1 root=$2 zshdir=$3
  install -d "$docroot/usr/share/man/man1" "$docroot/usr/share/man/man8" \
    "$root/usr/share/bash-completion/completions" "$root/usr/share/fish/vendor_completions.d" \
    "$root/$zshdir" "$docroot/usr/share/doc/lancached"
  local page
  for page in "$gen"/man/*.[18]; do
    # -n: no name or timestamp in the header, so rebuilds are byte-identical.
    gzip -9nc "$page" >"$docroot/usr/share/man/man${page##*.}/$(basename "$page").gz"
  done
  local b
  for b in lancached lancachectl; do
    install -m 644 "$gen/completions/$b.bash" "$root/usr/share/bash-completion/completions/$b"
    install -m 644 "$gen/completions/$b.fish" "$root/usr/share/fish/vendor_completions.d/$b.fish"
    install -m 644 "$gen/completions/_$b" "$root/$zshdir/_$b"
  done
  local doc
  for doc in README.md CONTRIBUTING.md docs/packaging.md; do
    if [ -f "$doc" ]; then install -m 644 "$doc" "$docroot/usr/share/doc/lancached/$(basename "$doc")"; fi
  done
  # The upstream changelog under the name both distributions' tools expect.
  gzip -9nc CHANGELOG.md >"$docroot/usr/share/doc/lancached/changelog.gz"
  find "$docroot" "$root" -type d -exec chmod 755 {} + && find "$docroot" "$root" -type f -exec chmod 644 {} +
}
# The client scripts, staged apart from the trees above because their modes differ: the sh ones
# carry a shebang and are executable (lintian/rpmlint insist), the PowerShell ones are data.
rm -rf "$stage/clients" && install -d "$stage/clients"
for s in "${CLIENT_SCRIPTS[@]}"; do
  case $s in
    *.sh) install -m 755 "$s" "$stage/clients/" ;;
    *) install -m 644 "$s" "$stage/clients/" ;;
  esac
done
stage_tree "$stage/deb" "$stage/deb" usr/share/zsh/vendor-completions
stage_tree "$stage/rpm/doc" "$stage/rpm/data" usr/share/zsh/site-functions

# Debian wants its own changelog (Debian format) beside the project's; it points at CHANGELOG.md.
maint=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["metadata"]["deb"]["maintainer"] for p in json.load(sys.stdin)["packages"] if p["name"]=="lancached"))')
# The date of the last commit, not "now", so the same commit builds the same package.
date=$(git log -1 --format=%cD 2>/dev/null || date -R)
printf 'lancached (%s-1) unstable; urgency=medium\n\n  * Release %s. Changes: /usr/share/doc/lancached/changelog.gz\n\n -- %s  %s\n' \
  "$version" "$version" "$maint" "$date" | gzip -9n >"$stage/deb/usr/share/doc/lancached/changelog.Debian.gz"

# --- Build the packages ------------------------------------------------------------------------
out=target/packages
rm -rf "$out"
mkdir -p "$out"
# --no-build: the binaries above are the ones whose assets were generated.
cargo deb --no-build --locked --profile "$profile" -p lancached --output "$out/"
cargo generate-rpm -p . --profile "$profile" --output "$out/"
ls -l "$out"
