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
#   CI                       set to true by CI; tests that need etcd or the Python client fail
#                            instead of skipping
#
# Python client test (tests/python_client.rs): it runs tests/python/client_test.py with the
# official `kubernetes` package from PyPI. The interpreter is the `python3` first on PATH (on
# our machines CPython 3.11 from pyenv, ahead of Debian's /usr/bin/python3), resolved to its
# real path (sys.executable, past pyenv's shim) and exported as CLUSTER_TEST_PYTHON so that the
# test runs the very interpreter the package was installed into. When the package is missing
# it is installed with `python3 -m pip install kubernetes` (`--user` when not root); if pip
# refuses because the interpreter is Debian's own ("externally managed", PEP 668), root gets
# Debian's python3-kubernetes package instead.
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
PACKAGES='protoc:protobuf-compiler curl:curl etcd:etcd-server nft:nftables ip:iproute2 busybox:busybox-static docker-registry:docker-registry zstd:zstd pkg-config:pkg-config'
# Libraries (no command to look for), as "file:package": libcontainer links libseccomp.
LIBRARIES='/usr/include/seccomp.h:libseccomp-dev'

install_packages() {
    missing=''
    for pair in $PACKAGES; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
    done
    for pair in $LIBRARIES; do
        [ -e "${pair%%:*}" ] || missing="$missing ${pair#*:}"
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

install_python_client() {
    if ! command -v python3 >/dev/null 2>&1; then
        warn 'python3 not found: the Python client test will skip'
        return
    fi
    python=$(python3 -c 'import sys; print(sys.executable)') || fatal 'python3 does not run'
    export CLUSTER_TEST_PYTHON="$python"
    if "$python" -c 'import kubernetes' >/dev/null 2>&1; then
        return
    fi
    if [ "${CLUSTER_TEST_NO_INSTALL:-0}" = 1 ]; then
        warn "not installing the Python kubernetes client for $python"
        return
    fi
    user='--user'
    if [ "$(id -u)" = 0 ]; then
        user='--root-user-action=ignore'
    fi
    info "installing the Python kubernetes client for $python"
    if "$python" -m pip install --quiet --disable-pip-version-check "$user" kubernetes; then
        return
    fi
    if [ "$(id -u)" = 0 ] && [ "${python#/usr/bin/}" != "$python" ] && command -v apt-get >/dev/null 2>&1; then
        info "pip refused; installing Debian's python3-kubernetes"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q || fatal 'apt-get update failed'
        apt-get install -y -q python3-kubernetes || fatal 'installing python3-kubernetes failed'
        return
    fi
    warn "could not install the Python kubernetes client for $python"
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
install_python_client
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
