#!/bin/sh
# Builds small test images from Debian's busybox-static, without Docker: as an OCI image layout
# (a directory and a tarball) and as a `docker save` tarball.
#
#   sh scripts/build-test-images.sh OUTDIR
#
# Writes:
#   OUTDIR/oci/                  OCI image layout; index.json points at an image index with a
#                                manifest for this machine's architecture and one for another
#                                (arm64, or amd64 on arm64 machines) that shares its layers
#   OUTDIR/busybox-oci.tar       the same layout as a tarball
#   OUTDIR/busybox-docker.tar    a `docker save` archive of this machine's image
#
# The image has three layers:
#   1. busybox (gzip): /bin/busybox, applet symlinks in /bin, /etc/passwd, /etc/group,
#      /etc/removed-by-layer-2, /var/cache/old/file, /tmp
#   2. changes (zstd): /etc/motd, a whiteout of /etc/removed-by-layer-2, /var/cache made opaque
#      (old/file hidden, new-file added), a hard link /bin/busybox-link to /bin/busybox
#   3. padding (uncompressed, gzip when PAD_MIB > 0): /padding, PAD_MIB MiB of random bytes
#      (0 by default: an empty file), to make images of a chosen size for benchmarks
#
# Environment variables:
#   IMAGE_NAME   name recorded in the archives (default docker.io/library/busybox:test)
#   PAD_MIB      size of the padding layer in MiB (default 0)
#   BUSYBOX      the static busybox to use (default /bin/busybox; install busybox-static)
#
# Output is reproducible: fixed mtimes, owners and order, gzip without names or times.

set -eu

info() {
    echo '[INFO] ' "$@"
}

fatal() {
    echo '[ERROR] ' "$@" >&2
    exit 1
}

[ $# -eq 1 ] || fatal "usage: $0 OUTDIR"
out=$1
name=${IMAGE_NAME:-docker.io/library/busybox:test}
pad=${PAD_MIB:-0}
busybox=${BUSYBOX:-/bin/busybox}

for tool in tar gzip zstd sha256sum stat; do
    command -v "$tool" >/dev/null 2>&1 || fatal "$tool is needed"
done
[ -x "$busybox" ] || fatal "$busybox not found: install busybox-static"
if ldd "$busybox" >/dev/null 2>&1; then
    fatal "$busybox is dynamically linked: install busybox-static"
fi

case "$(uname -m)" in
    x86_64) arch=amd64; other=arm64 ;;
    aarch64) arch=arm64; other=amd64 ;;
    armv7l) arch=arm; other=amd64 ;;
    *) fatal "unsupported machine $(uname -m)" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
rm -rf "$out/oci"
blobs="$out/oci/blobs/sha256"
mkdir -p "$blobs"

# tar with everything that would make the output differ between runs fixed.
det_tar() {
    dir=$1
    shift
    tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner \
        --format=gnu -C "$dir" -cf - "$@"
}

sha() {
    sha256sum "$1" | cut -d' ' -f1
}

size() {
    stat -c %s "$1"
}

# Layer 1: busybox.
l1="$work/l1"
mkdir -p "$l1/bin" "$l1/etc" "$l1/tmp" "$l1/var/cache/old" "$l1/root"
cp "$busybox" "$l1/bin/busybox"
for applet in sh true false echo cat ls id sleep env mkdir rm touch stat readlink wc head; do
    ln -s busybox "$l1/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n' >"$l1/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n' >"$l1/etc/group"
echo 'this file is deleted by layer 2' >"$l1/etc/removed-by-layer-2"
echo old >"$l1/var/cache/old/file"
chmod 1777 "$l1/tmp"
chmod 0700 "$l1/root"

# Layer 2: whiteout, opaque directory, hard link.
l2="$work/l2"
mkdir -p "$l2/etc" "$l2/var/cache" "$l2/bin"
echo 'built by scripts/build-test-images.sh' >"$l2/etc/motd"
: >"$l2/etc/.wh.removed-by-layer-2"
: >"$l2/var/cache/.wh..wh..opq"
echo new >"$l2/var/cache/new-file"
cp "$busybox" "$l2/bin/busybox"
ln "$l2/bin/busybox" "$l2/bin/busybox-link"

# Layer 3: padding.
l3="$work/l3"
mkdir -p "$l3"
if [ "$pad" -gt 0 ]; then
    head -c "$((pad * 1024 * 1024))" /dev/urandom >"$l3/padding"
else
    : >"$l3/padding"
fi

det_tar "$l1" bin etc root tmp var >"$work/l1.tar"
det_tar "$l2" bin etc var >"$work/l2.tar"
det_tar "$l3" padding >"$work/l3.tar"

gzip -n -c "$work/l1.tar" >"$work/l1.tar.gz"
zstd -q -c "$work/l2.tar" >"$work/l2.tar.zst"
if [ "$pad" -gt 0 ]; then
    gzip -n -1 -c "$work/l3.tar" >"$work/l3.blob"
    l3_type=application/vnd.oci.image.layer.v1.tar+gzip
else
    cp "$work/l3.tar" "$work/l3.blob"
    l3_type=application/vnd.oci.image.layer.v1.tar
fi

diff1=$(sha "$work/l1.tar")
diff2=$(sha "$work/l2.tar")
diff3=$(sha "$work/l3.tar")

add_blob() {
    digest=$(sha "$1")
    cp "$1" "$blobs/$digest"
    echo "$digest"
}

b1=$(add_blob "$work/l1.tar.gz")
b2=$(add_blob "$work/l2.tar.zst")
b3=$(add_blob "$work/l3.blob")

layers_json="{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$b1\",\"size\":$(size "$work/l1.tar.gz")},\
{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+zstd\",\"digest\":\"sha256:$b2\",\"size\":$(size "$work/l2.tar.zst")},\
{\"mediaType\":\"$l3_type\",\"digest\":\"sha256:$b3\",\"size\":$(size "$work/l3.blob")}"

# config ARCH → file
write_config() {
    printf '{"architecture":"%s","os":"linux","created":"2023-11-14T22:13:20Z","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","GREETING=hello"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo $GREETING"],"WorkingDir":"/tmp","User":"0:0","Labels":{"built-by":"build-test-images.sh"}},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s","sha256:%s"]}}' \
        "$1" "$diff1" "$diff2" "$diff3" >"$2"
}

# manifest CONFIG_FILE → file
write_manifest() {
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
        "$(sha "$1")" "$(size "$1")" "$layers_json" >"$2"
}

write_config "$arch" "$work/config-$arch.json"
write_config "$other" "$work/config-$other.json"
write_manifest "$work/config-$arch.json" "$work/manifest-$arch.json"
write_manifest "$work/config-$other.json" "$work/manifest-$other.json"
for file in config-$arch config-$other manifest-$arch manifest-$other; do
    add_blob "$work/$file.json" >/dev/null
done

variant() {
    [ "$1" = arm64 ] && printf ',"variant":"v8"'
    [ "$1" = arm ] && printf ',"variant":"v7"'
    return 0
}

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"%s}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"%s}}]}' \
    "$(sha "$work/manifest-$arch.json")" "$(size "$work/manifest-$arch.json")" "$arch" "$(variant "$arch")" \
    "$(sha "$work/manifest-$other.json")" "$(size "$work/manifest-$other.json")" "$other" "$(variant "$other")" \
    >"$work/index.json"
top=$(add_blob "$work/index.json")

tag=${name##*:}
case "$tag" in */*) tag=latest ;; esac
printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$top" "$(size "$work/index.json")" "$name" "$tag" >"$out/oci/index.json"
det_tar "$out/oci" oci-layout index.json blobs >"$out/busybox-oci.tar"

# docker save: uncompressed layers in <id>/layer.tar, config as <hex>.json.
save="$work/save"
mkdir -p "$save"
config_hex=$(sha "$work/config-$arch.json")
cp "$work/config-$arch.json" "$save/$config_hex.json"
for n in 1 2 3; do
    id=$(sha "$work/l$n.tar")
    mkdir -p "$save/$id"
    cp "$work/l$n.tar" "$save/$id/layer.tar"
    echo 1.0 >"$save/$id/VERSION"
done
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar","%s/layer.tar","%s/layer.tar"]}]' \
    "$config_hex" "$name" "$diff1" "$diff2" "$diff3" >"$save/manifest.json"
(cd "$save" && ls) >"$work/save-list"
det_tar "$save" $(cat "$work/save-list") >"$out/busybox-docker.tar"

info "built $name for linux/$arch (and linux/$other) in $out"
