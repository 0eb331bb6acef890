#!/usr/bin/env bash
# Checks that each vendored crate is the version published on crates.io plus exactly its
# patch: undo vendor/<crate>.patch on a copy and compare every file with the published
# crate's checksums (vendor/<crate>-<version>.sha256, taken from the registry's copy).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for crate in rtc:0.21.1 rtc-dtls:0.21.1 rtc-ice:0.21.1; do
  name="${crate%%:*}"
  version="${crate##*:}"
  work="$(mktemp -d)"
  cp -r "$here/$name/src" "$work/src"
  (cd "$work" && patch --quiet --reverse -p1 < "$here/$name.patch")
  if ! (cd "$work" && find src -type f -not -name '*.orig' | LC_ALL=C sort | xargs sha256sum) | diff -u "$here/$name-$version.sha256" -; then
    rm -rf "$work"
    echo "vendor/$name differs from $name $version + vendor/$name.patch: regenerate the patch (see vendor/README.md)" >&2
    exit 1
  fi
  rm -rf "$work"
  echo "vendor/$name is $name $version + vendor/$name.patch"
done
