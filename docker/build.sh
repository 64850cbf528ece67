#!/usr/bin/env bash
# Build the images with docker, or buildah where no Docker daemon answers (docker/engine.sh).
#   docker/build.sh [cpu|cuda|all|base]  (default all; base: print the base image it would use)
# Tags: qabench-cpu:<short sha> and qabench:<short sha> (QABENCH_IMAGE / QABENCH_CPU_IMAGE override);
# GIT_SHA is HEAD's, with -dirty when the tree has uncommitted changes (QABENCH_BUILD_SHA overrides).
# Base: QABENCH_BASE_IMAGE, else the Dockerfiles' own; when that is neither present nor pullable,
# a stand-in from Debian packages (docker/stand-in-base.sh), said on stderr.
# CPU torch: a folder holding the torch wheel, QABENCH_TORCH_WHEELS (else pip's own PIP_FIND_LINKS),
# replaces the PyTorch CPU index (buildah/podman mount it for the build; docker cannot).
# Prints one line per image: TAG SECONDS BYTES.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-all}"
case "$target" in cpu|cuda|all|base) ;; *) echo "usage: docker/build.sh [cpu|cuda|all|base]" >&2; exit 2 ;; esac
engine=docker/engine.sh
kind="$("$engine" name)"

if [ -n "${QABENCH_BUILD_SHA:-}" ]; then
  sha="$QABENCH_BUILD_SHA"
else
  sha="$(git rev-parse HEAD)"
  [ -z "$(git status --porcelain --untracked-files=no)" ] || sha="$sha-dirty"
fi
short="${sha:0:7}"

default_base="$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)"
base="${QABENCH_BASE_IMAGE:-$default_base}"
if ! "$engine" image-exists "$base"; then
  if [ "$kind" = docker ]; then pull=(docker pull -q "$base"); else pull=(podman ${QABENCH_STORAGE_DRIVER:+--storage-driver "$QABENCH_STORAGE_DRIVER"} pull -q "$base"); fi
  if ! "${pull[@]}" >/dev/null 2>&1; then
    [ -z "${QABENCH_BASE_IMAGE:-}" ] || { echo "base image $base: not present and cannot be pulled" >&2; exit 3; }
    echo "note: $base cannot be pulled; building on a stand-in from Debian packages (docker/README.md)" >&2
    base="$(docker/stand-in-base.sh)"
  fi
fi

if [ "$target" = base ]; then echo "$base"; exit 0; fi

build() {  # TAG DOCKERFILE EXTRA-ARGS...
  local tag="$1" file="$2" start
  shift 2
  start=$(date +%s)
  "$engine" build -f "$file" --build-arg BASE_IMAGE="$base" --build-arg GIT_SHA="$sha" "$@" -t "$tag" . >&2
  echo "$tag $(( $(date +%s) - start )) $("$engine" size "$tag")"
}

if [ "$target" != cuda ]; then
  wheels="${QABENCH_TORCH_WHEELS:-}"
  # pip's own find-links folder only where it can be mounted (buildah); docker uses the index.
  [ -n "$wheels" ] || [ "$kind" = docker ] || wheels="${PIP_FIND_LINKS:-}"
  torch=()
  if [ -n "$wheels" ] && compgen -G "$wheels/torch-*.whl" >/dev/null; then
    [ "$kind" != docker ] || { echo "QABENCH_TORCH_WHEELS: docker build cannot mount a folder; unset it to use the PyTorch CPU index" >&2; exit 2; }
    torch=(--build-arg TORCH_INDEX_URL= --build-arg TORCH_WHEELS=/wheels -v "$(realpath "$wheels"):/wheels:ro")
  fi
  build "${QABENCH_CPU_IMAGE:-qabench-cpu:$short}" docker/Dockerfile.cpu "${torch[@]}"
fi
if [ "$target" != cpu ]; then
  build "${QABENCH_IMAGE:-qabench:$short}" docker/Dockerfile
fi
