#!/bin/sh
# Benchmark: pull + unpack of a ~5 MB image from a local registry (Debian's docker-registry on
# a loopback port), with `cluster images pull` into a fresh data directory each round.
#
#   sh scripts/bench-images.sh
#
# Prints one line per round and a summary (min / median / max wall time, MB/s of compressed
# image). Each round includes process start, manifest resolution, download and digest checks
# of every blob, decompression, diff-ID checks and unpacking of every layer (as root: with
# ownership and overlay whiteouts), and recording the image.
#
# Environment variables:
#   CLUSTER_BIN   the cluster binary (default: target/release/cluster, built if missing with
#                 `cargo build --release`)
#   ROUNDS        number of rounds (default 10)
#   PAD_MIB       size of the image's random padding layer in MiB (default 3: about 5 MB
#                 compressed in total with the two busybox layers)

set -eu

info() {
    echo '[INFO] ' "$@"
}

fatal() {
    echo '[ERROR] ' "$@" >&2
    exit 1
}

cd "$(dirname "$0")/.."
rounds=${ROUNDS:-10}
pad=${PAD_MIB:-3}
bin=${CLUSTER_BIN:-target/release/cluster}

for tool in docker-registry curl sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || fatal "$tool is needed"
done
if [ ! -x "$bin" ]; then
    info "building $bin"
    cargo build --release --bin cluster
fi

work=$(mktemp -d)
registry_pid=''
cleanup() {
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

PAD_MIB=$pad sh scripts/build-test-images.sh "$work/image" >/dev/null

# A free loopback port: ask the kernel, through python3 when present, else pick from a range.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 45123)
cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
base="http://127.0.0.1:$port"
tries=0
until curl -fs "$base/v2/" >/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 100 ] || fatal "docker-registry did not start: $(cat "$work/registry.log")"
    sleep 0.1
done

# Push every blob of the layout, then its documents (children first), then the tag.
layout="$work/image/oci"
push_blob() {
    digest=sha256:$(basename "$1")
    location=$(curl -fsS -X POST -D - -o /dev/null "$base/v2/bench/busybox/blobs/uploads/" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    case "$location" in http*) ;; *) location="$base$location" ;; esac
    case "$location" in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' \
        --data-binary "@$1" "$location${sep}digest=$digest" >/dev/null
}
push_manifest() { # FILE MEDIA_TYPE REFERENCE
    curl -fsS -X PUT -H "Content-Type: $2" --data-binary "@$1" \
        "$base/v2/bench/busybox/manifests/$3" >/dev/null
}
for blob in "$layout"/blobs/sha256/*; do
    push_blob "$blob"
done
top=$(sed 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/' "$layout/index.json")
for blob in "$layout"/blobs/sha256/*; do
    name=$(basename "$blob")
    if head -c 80 "$blob" | grep -q '^{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"'; then
        push_manifest "$blob" application/vnd.oci.image.manifest.v1+json "sha256:$name"
    fi
done
push_manifest "$layout/blobs/sha256/$top" application/vnd.oci.image.index.v1+json latest

info "image: 127.0.0.1:$port/bench/busybox:latest"
# An empty config file, so that the host's /etc/cluster/config.yaml does not apply.
: >"$work/config.yaml"

times=''
round=1
while [ "$round" -le "$rounds" ]; do
    data="$work/data-$round"
    start=$(date +%s%N)
    "$bin" images pull --data-dir "$data" --config "$work/config.yaml" \
        "127.0.0.1:$port/bench/busybox:latest" >/dev/null 2>"$work/pull.log" ||
        fatal "pull failed: $(cat "$work/pull.log")"
    end=$(date +%s%N)
    ms=$(((end - start) / 1000000))
    blobs=$(du -sb "$data/agent/runtime/content/blobs" | cut -f1)
    echo "round $round: ${ms} ms (blobs ${blobs} bytes)"
    times="$times $ms"
    rm -rf "$data"
    round=$((round + 1))
done
echo "$times" | tr ' ' '\n' | sed '/^$/d' | sort -n | awk -v blobs="$blobs" '
    { t[NR] = $1 }
    END {
        median = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
        printf "pull+unpack of %.1f MB (compressed): min %d ms, median %d ms, max %d ms (%d rounds); %.1f MB/s at the median\n",
            blobs / 1e6, t[1], median, t[NR], NR, blobs / 1e6 / (median / 1000)
    }'
