#!/usr/bin/env bash
# Container entrypoint: validate the manifest(s) first (exit 2 on a user mistake, before any
# model download), then run them. Arguments after the manifests go to `runner run`.
set -euo pipefail
# Artifacts readable by the host's other users (files 644, folders 755) unless QABENCH_UMASK, which
# the runner applies itself (and rejects with exit 2 when it is not an octal umask), says otherwise.
[ -n "${QABENCH_UMASK:-}" ] || umask 0022
if [ "$#" -eq 0 ]; then
  echo "usage: IMAGE MANIFEST.yaml... [--storage URI]" >&2
  exit 2
fi
manifests=()
for arg in "$@"; do
  case "$arg" in --*) break ;; *) manifests+=("$arg") ;; esac
done
python -m runner validate "${manifests[@]}"
exec python -m runner run "$@"
