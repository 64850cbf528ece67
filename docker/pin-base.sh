#!/usr/bin/env bash
# Pin both Dockerfiles' base to the digest its registry serves for the tag now:
#   docker/pin-base.sh [IMAGE:TAG]    (default: the tag of docker/Dockerfile's BASE_IMAGE)
# The digest is the one `docker pull IMAGE:TAG` resolves (the multi-platform index where there is
# one), looked up with skopeo or `docker buildx imagetools`; QABENCH_BASE_DIGEST=sha256:... skips
# the lookup. Rewrites `ARG BASE_IMAGE=IMAGE:TAG@sha256:...` in Dockerfile and Dockerfile.cpu.
set -euo pipefail
here="$(dirname "$0")"
current="$(sed -n 's/^ARG BASE_IMAGE=//p' "$here/Dockerfile")"
tag="${1:-${current%@*}}"
case "$tag" in *:*) ;; *) echo "$tag: give IMAGE:TAG (a tag, so that the pin says what it is)" >&2; exit 2 ;; esac

digest="${QABENCH_BASE_DIGEST:-}"
if [ -z "$digest" ]; then
  if command -v skopeo >/dev/null; then
    raw="$(skopeo inspect --raw "docker://$tag")" || { echo "$tag: skopeo could not read it from its registry" >&2; exit 3; }
    digest="sha256:$(printf '%s' "$raw" | sha256sum | cut -d' ' -f1)"
  elif command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then
    digest="$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest.Digest}}' | tr -d '"')" \
      || { echo "$tag: docker buildx could not read it from its registry" >&2; exit 3; }
  else
    echo "neither skopeo nor docker buildx is installed (apt-get install skopeo), or set QABENCH_BASE_DIGEST" >&2
    exit 2
  fi
fi
[[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "$digest: not a sha256 digest" >&2; exit 2; }

for file in "$here/Dockerfile" "$here/Dockerfile.cpu"; do
  sed -i "s|^ARG BASE_IMAGE=.*|ARG BASE_IMAGE=$tag@$digest|" "$file"
done
echo "BASE_IMAGE=$tag@$digest in $here/Dockerfile and $here/Dockerfile.cpu"
