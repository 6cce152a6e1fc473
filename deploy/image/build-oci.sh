#!/usr/bin/env bash
# Builds eventflow's image without a Docker engine or a registry: with buildah, FROM scratch,
# the given binary plus the shared libraries it links (as ldd lists them), the default
# pipeline, and the same user, directories, labels, entrypoint and command as the Dockerfile.
# Used where no base image can be pulled (and by the tests).
#   deploy/image/build-oci.sh target/release/eventflow eventflow.oci.tar [eventflow:0.1.0]
# The result is an OCI archive: `podman load -i eventflow.oci.tar`, or
# `skopeo copy oci-archive:eventflow.oci.tar docker-daemon:eventflow:0.1.0`.
set -euo pipefail
bin=${1:?usage: build-oci.sh BINARY OUT.tar [NAME:TAG]}
out=${2:?usage: build-oci.sh BINARY OUT.tar [NAME:TAG]}
name=${3:-eventflow:0.1.0}
here=$(cd "$(dirname "$0")/../.." && pwd)
b() { buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@"; }

root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"; [ -n "${ctr:-}" ] && b rm "$ctr" >/dev/null 2>&1 || true' EXIT
install -D -m 0755 "$bin" "$root/usr/local/bin/eventflow"
install -D -m 0644 "$here/deploy/image/pipeline.yaml" "$root/etc/eventflow/pipeline.yaml"
install -d -m 0750 "$root/var/lib/eventflow"
install -d -m 1777 "$root/tmp"
# The dynamic loader and libraries the binary needs (glibc, libgcc_s, libm).
for lib in $(ldd "$bin" | grep -o '/[^ ]*' | sort -u); do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
# CA certificates for https webhooks and API servers.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/eventflow:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"

ctr=$(b from scratch)
b copy "$ctr" "$root/" / >/dev/null
# The one writable directory belongs to the image's user (copies land as root:root).
mnt=$(b mount "$ctr")
chown 65532:65532 "$mnt/var/lib/eventflow"
b umount "$ctr" >/dev/null
b config \
  --user 65532:65532 \
  --workingdir /var/lib/eventflow \
  --port 9464 \
  --entrypoint '["eventflow"]' \
  --cmd '["run", "/etc/eventflow/pipeline.yaml"]' \
  --env PATH=/usr/local/bin:/usr/bin:/bin \
  --env MIMALLOC_ALLOW_THP=0 \
  --env MIMALLOC_PURGE_DELAY=0 \
  --env MIMALLOC_ARENA_EAGER_COMMIT=0 \
  --label org.opencontainers.image.title=eventflow \
  --label "org.opencontainers.image.description=Turns Kubernetes Events into actions through a declarative, hot-reloadable pipeline" \
  --label org.opencontainers.image.version="${name##*:}" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$ctr"
b commit --quiet "$ctr" "oci-archive:$out:$name" >/dev/null
echo "$out"
