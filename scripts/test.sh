#!/bin/sh
# Runs every check CI runs: formatting, clippy (warnings are errors), and all tests.
#
# On a fresh Debian/Ubuntu machine, run as root once so that the tools the tests use are
# installed; afterwards any user can run it.
#
#   sh scripts/test.sh
#
# Environment variables:
#   CLUSTER_TEST_NO_INSTALL  set to 1 to never install packages (missing tools make the tests
#                            that need them skip, or fail under CI=true)
#   CLUSTER_TEST_ARGS        extra arguments passed to `cargo test` (e.g. a test name filter)
#   CI                       set to true by CI; tests that need etcd fail instead of skipping
#
# Tests run with plain `cargo test` (library, binary, tests/ and doc tests) rather than
# cargo-nextest: it needs nothing extra installed, runs doc tests too, and our test binaries are
# few, so nextest's process-per-test buys little. `--all-targets` is left out on purpose: it would
# run benches/ (harness = false) as full benchmarks; clippy --all-targets still compiles them.

set -eu

info() {
    echo '[INFO] ' "$@"
}

warn() {
    echo '[WARN] ' "$@" >&2
}

fatal() {
    echo '[ERROR] ' "$@" >&2
    exit 1
}

# Debian packages the tests use, as "command:package" pairs.
PACKAGES='protoc:protobuf-compiler curl:curl etcd:etcd-server nft:nftables ip:iproute2 busybox:busybox-static docker-registry:docker-registry'

install_packages() {
    missing=''
    for pair in $PACKAGES; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
    done
    if [ -z "$missing" ]; then
        return
    fi
    if [ "${CLUSTER_TEST_NO_INSTALL:-0}" = 1 ]; then
        warn "not installing missing packages:$missing"
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        warn "missing packages:$missing (run as root once to install them)"
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "missing packages:$missing (no apt-get on this system)"
        return
    fi
    info "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || fatal 'apt-get update failed'
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -q $missing || fatal "installing$missing failed"
}

find_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || fatal 'cargo not found; install Rust from https://rustup.rs'
}

cd "$(dirname "$0")/.."

install_packages
find_cargo

info 'cargo fmt --check'
cargo fmt --all --check || fatal 'formatting differs; run `cargo fmt`'

info 'cargo clippy --all-targets -- -D warnings'
cargo clippy --all-targets -- -D warnings

info 'cargo test'
# cargo prints one summary per test binary (the last is the doc tests'); keep a copy of the
# output to print one total at the end.
log=$(mktemp)
status_file=$(mktemp)
trap 'rm -f "$log" "$status_file"' EXIT
# shellcheck disable=SC2086 # CLUSTER_TEST_ARGS is a list of arguments
{ cargo test --no-fail-fast ${CLUSTER_TEST_ARGS:-} 2>&1; echo "$?" >"$status_file"; } | tee "$log"
status=$(cat "$status_file")
total=$(awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed/) passed += $i
            if ($(i + 1) ~ /^failed/) failed += $i
            if ($(i + 1) ~ /^ignored/) ignored += $i
        }
    }
    END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log")
if [ "$status" != 0 ]; then
    warn "cargo test failed (exit $status)"
    echo "$total"
    exit 1
fi
info 'all checks passed'
# The last line is the total over every test binary.
echo "$total"
