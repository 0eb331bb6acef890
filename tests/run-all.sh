#!/usr/bin/env bash
# The whole Tutti test suite on a fresh Debian machine: installs what it needs, then runs
# the quality gates and every test. Safe to run again; installed parts are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

# 1. System packages. protobuf-compiler: etcd-client needs protoc to build.
#    (etcd-server, chromium, coturn join this list with the issues that use them.)
packages=(protobuf-compiler python3-venv util-linux ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. Python peers (aiortc, an independent WebRTC stack) in a local venv.
if ! .venv/bin/python3 -c 'import aiortc, websockets' 2>/dev/null; then
  say "installing aiortc into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/aiortc/requirements.txt
fi
export TUTTI_PYTHON="$PWD/.venv/bin/python3"

# 3. Quality gates.
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# 4. Every test: unit tests, then real peers against real shards.
say "cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads "${TUTTI_TEST_THREADS:-2}"
say "all tests passed"
