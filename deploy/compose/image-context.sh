#!/bin/sh
# Writes into OUT the files of the watcher's image that are not in the
# repository, laid out as the Dockerfile's "build" stage holds them:
#   OUT/watcher               the static binary (no libc, no loader)
#   OUT/ca-certificates.crt   the CA bundle, for HTTPS to Prometheus and webhooks
#   OUT/dirs/tmp              1777, as /tmp is everywhere
#   OUT/dirs/var/lib          the state directory's parents, root's
#   OUT/state                 empty: becomes /var/lib/rollback-watcher, uid 65532's
# The Dockerfile's Go stage runs this script, and so does `make image` on
# this machine (then the engine pulls no image: deploy/README.md
# "Docker Compose"). Usage: image-context.sh OUT (from the repository root).
# VERSION and REVISION name the build, GO the go command.
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 OUT (a directory for the image's build context, such as bin/image)" >&2
	exit 2
fi
out=$1
GO=${GO:-go}
version_pkg=github.com/prometheus/common/version
# Debian's ca-certificates package, on the host as in golang:*-bookworm.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$ca_bundle" ]; then
	echo "$0: $ca_bundle is missing: install the ca-certificates package (scripts/deps.sh does)" >&2
	exit 1
fi

# Only the parts this script writes are removed: OUT may be a directory
# the caller chose, holding other things.
rm -rf "$out/dirs" "$out/state" "$out/watcher" "$out/ca-certificates.crt"
# install -d sets each mode whatever the umask: a 0700 /var/lib would
# lock uid 65532 out of its own state directory.
install -d -m 0755 "$out" "$out/dirs" "$out/dirs/var" "$out/dirs/var/lib" "$out/state"
install -d -m 1777 "$out/dirs/tmp"
install -m 0644 "$ca_bundle" "$out/ca-certificates.crt"

# CGO_ENABLED=0: the image has no C library. -trimpath -s -w: no build
# paths, symbols or DWARF: 30% smaller (32.7 MB instead of 46.7).
CGO_ENABLED=0 "$GO" build -trimpath \
	-ldflags "-s -w -X $version_pkg.Version=${VERSION:-dev} -X $version_pkg.Revision=${REVISION:-unknown}" \
	-o "$out/watcher" ./cmd/watcher
chmod 0755 "$out/watcher"
