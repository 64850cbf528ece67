#!/usr/bin/env bash
# One interface to a container engine: docker where a Docker daemon answers, otherwise buildah
# (builds) and podman (runs) without a daemon. QABENCH_ENGINE=docker|podman forces one;
# QABENCH_STORAGE_DRIVER (e.g. vfs, where overlay mounts are refused) is passed to buildah and podman,
# which must agree on it to see each other's images.
#   engine.sh name | image-exists TAG | import TAG < rootfs.tar | build BUILD-ARGS... | run RUN-ARGS...
#   engine.sh stop NAME | size TAG (bytes) | layers TAG (its layer digests, base first) | rmi TAG...
set -euo pipefail

pick() {
  if [ -n "${QABENCH_ENGINE:-}" ]; then echo "$QABENCH_ENGINE"; return; fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v buildah >/dev/null && command -v podman >/dev/null; then echo podman; return; fi
  echo "no container engine: neither a Docker daemon nor buildah and podman (apt-get install buildah podman)" >&2
  return 3
}

engine="$(pick)" || exit $?
storage=()
[ -z "${QABENCH_STORAGE_DRIVER:-}" ] || storage=(--storage-driver "$QABENCH_STORAGE_DRIVER")
podman_cmd=(podman "${storage[@]}")
# crun, podman's default runtime, fails on some hosts' cgroups (inside containers, in particular).
# podman asks for 1048576 open files and processes; where the host allows fewer, runc fails with
# "error setting rlimit": ask for the host's own limits (processes at most 32768, what podman gives
# conmon). QABENCH_PODMAN_ULIMITS="nofile=S:H nproc=S:H" overrides.
at_most() { if [ "$1" = unlimited ] || [ "$1" -gt "$2" ]; then echo "$2"; else echo "$1"; fi; }
nofile="$(at_most "$(ulimit -Sn)" 1048576):$(at_most "$(ulimit -Hn)" 1048576)"
nproc="$(at_most "$(ulimit -Su)" 32768):$(at_most "$(ulimit -Hu)" 32768)"
ulimits="${QABENCH_PODMAN_ULIMITS:-nofile=$nofile nproc=$nproc}"
ulimit_args=()
for limit in $ulimits; do ulimit_args+=(--ulimit "$limit"); done
podman_run=(podman "${storage[@]}" --runtime "${QABENCH_OCI_RUNTIME:-runc}")

cmd="${1:-}"; shift || true
case "$cmd" in
  name) echo "$engine" ;;
  image-exists)
    if [ "$engine" = docker ]; then docker image inspect "$1" >/dev/null 2>&1; else "${podman_cmd[@]}" image exists "$1"; fi ;;
  import)
    if [ "$engine" = docker ]; then docker import - "$1" >/dev/null; else "${podman_cmd[@]}" import - "$1" >/dev/null; fi ;;
  build)
    # chroot isolation: RUN steps need no user namespaces or nested cgroups.
    if [ "$engine" = docker ]; then docker build "$@"; else buildah "${storage[@]}" bud --isolation chroot --layers --format docker "$@"; fi ;;
  run)
    if [ "$engine" = docker ]; then exec docker run "$@"; else exec "${podman_run[@]}" run "${ulimit_args[@]}" "$@"; fi ;;
  stop)
    if [ "$engine" = docker ]; then docker stop "$@"; else "${podman_cmd[@]}" stop "$@"; fi ;;
  size)
    if [ "$engine" = docker ]; then docker image inspect --format '{{.Size}}' "$1"; else "${podman_cmd[@]}" image inspect --format '{{.Size}}' "$1"; fi ;;
  layers)
    if [ "$engine" = docker ]; then docker image inspect --format '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1"
    else "${podman_cmd[@]}" image inspect --format '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1"; fi | sed '/^$/d' ;;
  rmi)
    if [ "$engine" = docker ]; then docker rmi "$@" >/dev/null; else "${podman_cmd[@]}" rmi "$@" >/dev/null; fi ;;
  *) echo "usage: engine.sh name|image-exists|import|build|run|stop|size|layers|rmi ..." >&2; exit 2 ;;
esac
