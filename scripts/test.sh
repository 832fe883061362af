#!/usr/bin/env bash
# Installs whatever the tests need (when missing) and runs them.
#
#   scripts/test.sh                 unit, integration and peer tests (cargo test --all-targets)
#   scripts/test.sh --lint          also cargo fmt --check and cargo clippy -D warnings
#                                   (the default when CI=true; --no-lint turns it off)
#   scripts/test.sh -- oracle       extra arguments after `--` go to cargo test (a test filter)
#
# Every step runs even when an earlier one fails; the script exits non-zero if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

LINT=0
if [ "${CI:-}" = "true" ]; then LINT=1; fi
TEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lint) LINT=1 ;;
    --no-lint) LINT=0 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; TEST_ARGS=("$@"); break ;;
    *) echo "scripts/test.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '\n==> %s\n' "$*"; }
warn() { printf 'scripts/test.sh: warning: %s\n' "$*" >&2; }
die() { printf 'scripts/test.sh: error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
# Ensure tools. Every ensure_* is idempotent: it does nothing when the tool is already there,
# so a second run (or a machine that has everything) installs nothing.
# ---------------------------------------------------------------------------------------------

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif have sudo; then sudo "$@"
  else die "need root to run: $* (no sudo available)"
  fi
}

APT_UPDATED=0
# ensure_apt COMMAND PACKAGE...: apt-get installs PACKAGE... unless COMMAND is on the PATH.
ensure_apt() {
  local cmd=$1; shift
  have "$cmd" && return 0
  have apt-get || die "$cmd is missing and apt-get is not available: install $* by hand"
  say "installing $* (for $cmd)"
  if [ "$APT_UPDATED" = 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  have "$cmd" || die "installed $* but $cmd is still not on the PATH"
}

# ensure_cargo_bin BINARY CRATE VERSION [CARGO INSTALL ARGS...]: `cargo install --locked` into a
# cache directory that survives between runs (ANTISPIDER_TOOLS_DIR), unless BINARY is already on
# the PATH.
TOOLS_DIR=${ANTISPIDER_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/antispider-tools}
export ANTISPIDER_TOOLS_DIR=$TOOLS_DIR
export PATH="$TOOLS_DIR/bin:$PATH"
ensure_cargo_bin() {
  local bin=$1 crate=$2 version=$3; shift 3
  have "$bin" && return 0
  say "installing $crate $version into $TOOLS_DIR (once; later runs reuse it)"
  # Its own target directory, removed afterwards: only the binary is kept.
  local build
  build=$(mktemp -d)
  cargo install --locked --root "$TOOLS_DIR" --target-dir "$build" --version "$version" "$@" "$crate"
  rm -rf "$build"
}

# ensure_component COMPONENT CARGO_SUBCOMMAND: a rustup component such as rustfmt or clippy.
ensure_component() {
  local component=$1 sub=$2
  cargo "$sub" --version >/dev/null 2>&1 && return 0
  have rustup || die "cargo $sub is missing and rustup is not available: install $component"
  say "installing the $component component"
  rustup component add "$component"
}

ensure_tools() {
  have cargo || die "cargo not found: install the Rust toolchain first (rustup)"
  if [ "$LINT" = 1 ]; then
    ensure_component rustfmt fmt
    ensure_component clippy clippy
  fi
  # Servers for the connector tests (tests/support starts private instances on 127.0.0.1).
  # mariadbd lives in /usr/sbin, which is not on every user's PATH.
  case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac
  ensure_apt redis-server redis-server
  ensure_apt mariadbd mariadb-server
  ensure_apt mariadb mariadb-client
  # Tests stop servers and engine processes gracefully with kill(1) (SIGTERM, SIGINT).
  ensure_apt kill procps
  # The Kafka-protocol broker for tests/connectors_kafka.rs: Tansu with in-memory storage
  # (the `dynostore` feature). The build takes 15-60 min on 2 cores, once.
  ensure_cargo_bin tansu tansu 0.6.0 --features dynostore

  # The peer and sample-line tests read the shared reference material beside the repository.
  if [ ! -d ../shared/reference ]; then
    warn "../shared/reference not found (expected beside this repository): the parser peer"
    warn "tests and the sample-line tests will fail"
  fi
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

FAILED=()
step() {
  local name=$1; shift
  say "$name: $*"
  local start=$SECONDS
  if "$@"; then
    echo "--- $name passed in $((SECONDS - start)) s"
  else
    echo "--- $name FAILED (exit $?) after $((SECONDS - start)) s"
    FAILED+=("$name")
  fi
}

say "ensure tools"
ensure_tools
cargo --version
rustc --version

if [ "$LINT" = 1 ]; then
  step fmt cargo fmt --all --check
  step clippy cargo clippy --all-targets -- -D warnings
fi
step test cargo test --all-targets --no-fail-fast ${TEST_ARGS[@]+"${TEST_ARGS[@]}"}

if [ ${#FAILED[@]} -gt 0 ]; then
  say "FAILED: ${FAILED[*]}"
  exit 1
fi
say "all passed"
