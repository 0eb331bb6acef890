#!/usr/bin/env bash
# Checks that vendor/rtc is rtc 0.21.1 as published on crates.io plus exactly
# vendor/rtc.patch: undo the patch on a copy and compare every file with the published
# crate's checksums (vendor/rtc-0.21.1.sha256, taken from the registry's copy).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$here/rtc/src" "$work/src"
(cd "$work" && patch --quiet --reverse -p1 < "$here/rtc.patch")
if ! (cd "$work" && find src -type f -not -name '*.orig' | LC_ALL=C sort | xargs sha256sum) | diff -u "$here/rtc-0.21.1.sha256" -; then
  echo "vendor/rtc differs from rtc 0.21.1 + vendor/rtc.patch: regenerate the patch (see vendor/README.md)" >&2
  exit 1
fi
echo "vendor/rtc is rtc 0.21.1 + vendor/rtc.patch"
