#!/usr/bin/env bash
# A stand-in for python:3.11.7-slim-bookworm where no registry can be reached: Debian bookworm's
# minimal root from a Debian mirror (debootstrap) with its Python 3.11, shaped like the official
# image where the Dockerfiles rely on it (`python` and `pip` on PATH, pip allowed to install
# system-wide), imported as an image. Needs root (debootstrap) and buildah or docker.
#   docker/stand-in-base.sh [TAG]     (default localhost/qabench-stand-in:bookworm-python3.11)
# Prints the tag. An image already tagged so is kept: delete it to rebuild.
set -euo pipefail
tag="${1:-localhost/qabench-stand-in:bookworm-python3.11}"
mirror="${QABENCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
engine="$(dirname "$0")/engine.sh"

if "$engine" image-exists "$tag"; then echo "$tag"; exit 0; fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 2; }

root="$(mktemp -d "${TMPDIR:-/tmp}/qabench-stand-in.XXXXXX")"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates bookworm "$root" "$mirror" >&2
# The official image's /usr/local/bin/python and pip; Debian marks its Python externally managed (PEP 668).
ln -s /usr/bin/python3 "$root/usr/local/bin/python"
ln -s /usr/bin/pip3 "$root/usr/local/bin/pip"
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
# The build host's CA bundle, so that a TLS-inspecting proxy between this host and PyPI is trusted
# by the builds (Debian's pip reads this bundle).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# Nothing else of the build host's in the image: apt's package lists are fetched again by the Dockerfiles.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" --numeric-owner -c . | "$engine" import "$tag" >&2
echo "$tag"
