#!/usr/bin/env bash
# `docker run` arguments that give a qabench container this shell's credentials and settings, each
# followed by a NUL byte (read them with `mapfile -d '' -t args < <(docker/run-args.sh)`).
#
# A value is never written into an argument: `-e NAME` makes docker copy NAME from its own
# environment, so no token or secret key shows in `ps` or in shell history. Only paths are written
# (`-v`, and `-e NAME=/run/qabench/...` for a variable that names a file mounted there).
#
#   AWS_* (keys, profile, region, endpoints, retries, checksums)   passed when set
#   AWS_CA_BUNDLE, AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE,
#   AWS_WEB_IDENTITY_TOKEN_FILE                                    the file mounted read-only
#   ~/.aws                                                         mounted read-only at the image user's
#   HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_* settings       passed when set
#   the hub token file of `hf auth login` (when HF_TOKEN is unset) mounted read-only
#   QABENCH_*                                                      passed, except those naming the host's
#                                                                  own folders or image (see below)
#   QABENCH_STORAGE                                                s3://: passed; a folder: mounted at
#                                                                  /work/runs (default ./runs)
set -euo pipefail

# The images' user: docker/Dockerfile and Dockerfile.cpu `useradd --create-home --uid 1000 qabench`.
container_home=/home/qabench
files=/run/qabench
args=()

pass() {
  local name
  for name in "$@"; do
    if [ -n "${!name:-}" ]; then args+=(-e "$name"); fi
  done
}

pass AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_REGION AWS_DEFAULT_REGION \
  AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL_STS AWS_ROLE_ARN AWS_ROLE_SESSION_NAME \
  AWS_STS_REGIONAL_ENDPOINTS AWS_MAX_ATTEMPTS AWS_RETRY_MODE AWS_REQUEST_CHECKSUM_CALCULATION \
  AWS_RESPONSE_CHECKSUM_VALIDATION
for name in AWS_CA_BUNDLE AWS_CONFIG_FILE AWS_SHARED_CREDENTIALS_FILE AWS_WEB_IDENTITY_TOKEN_FILE; do
  if [ -n "${!name:-}" ]; then
    if [ ! -f "${!name}" ]; then echo "$name=${!name}: no such file" >&2; exit 2; fi
    args+=(-v "$(realpath "${!name}"):$files/$name:ro" -e "$name=$files/$name")
  fi
done
# The default place of the profiles that AWS_PROFILE names (and of SSO's token cache, which a
# read-only mount cannot refresh: log in on the host).
if [ -d "$HOME/.aws" ]; then args+=(-v "$(realpath "$HOME/.aws"):$container_home/.aws:ro"); fi

pass HF_TOKEN HF_ENDPOINT HF_HUB_OFFLINE HF_HUB_ENABLE_HF_TRANSFER HF_HUB_DISABLE_TELEMETRY \
  HF_HUB_ETAG_TIMEOUT HF_HUB_DOWNLOAD_TIMEOUT
token_file="${HF_TOKEN_PATH:-${HF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/huggingface}/token}"
if [ -z "${HF_TOKEN:-}" ] && [ -f "$token_file" ]; then
  args+=(-v "$(realpath "$token_file"):$files/hf-token:ro" -e "HF_TOKEN_PATH=$files/hf-token")
fi

# Not passed: QABENCH_IMAGE picks the image on the host; QABENCH_GIT_SHA is baked into the image
# (its provenance must name the image's code); QABENCH_MODEL_CACHE and QABENCH_WORKDIR name host
# folders, and the image keeps both under its /cache volume.
while IFS= read -r name; do
  case "$name" in
    QABENCH_IMAGE | QABENCH_GIT_SHA | QABENCH_MODEL_CACHE | QABENCH_WORKDIR | QABENCH_STORAGE) ;;
    QABENCH_*) pass "$name" ;;
  esac
done < <(compgen -e | LC_ALL=C sort)

# The image writes to QABENCH_STORAGE=/work/runs: an s3:// location replaces it, a local folder is
# mounted there. Created here, or docker would create it owned by root.
storage="${QABENCH_STORAGE:-runs}"
case "$storage" in
  s3://*) pass QABENCH_STORAGE; storage=runs ;;
  file://*) storage="${storage#file://}"; storage="${storage#localhost}" ;;
esac
mkdir -p "$storage"
args+=(-v "$(realpath "$storage"):/work/runs")

printf '%s\0' "${args[@]}"
