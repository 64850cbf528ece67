#!/usr/bin/env bash
# The device check for a lent GPU host, run from the repository root (docs/gpu-checks.md).
#
#   bench/gpu.sh --out DIR            the GPU test tier (tests/gpu, JUnit + measurements in DIR), then the
#                                     benchmark on random-weight Gemma-2B and Llama-2-7B shapes: one
#                                     Markdown report (DIR/gpu-bench.md, printed) + DIR/gpu-bench.json
#   bench/gpu.sh --tier --out DIR     the GPU test tier alone
#   bench/gpu.sh --smoke --out DIR    every method end to end on tiny models (bench/gpu_smoke.py)
#   bench/gpu.sh --tiny --out DIR     tiny float32 shapes and the tier's dry run: a dry run, CPU is fine
#   --no-install                      use the interpreter's own packages (a dev venv: PYTHON=.venv/bin/python)
#   --budget SECONDS                  wall-clock budget for install + tier + benchmark (default 530)
#   --only A,B                        run only these sections (a rerun of what failed; `tier` is one)
#
# Sized for a 15-minute accelerator lease of which machine start-up takes several, and for one
# `run` call (at most 600 s): the default budget of 530 s keeps the whole script under 9 minutes.
# Sections run in order of importance, each in its own process under `timeout`; a section is
# skipped when the budget left is below what it needs, and a failed or killed section leaves the
# others' results intact.
set -uo pipefail

out=/tmp/gpu-out mode=bench install=1 budget=530 tiny=() only=
while (($#)); do
  case $1 in
    --out) out=$2; shift ;;
    --smoke) mode=smoke ;;
    --tier) mode=tier ;;
    --tiny) tiny=(--tiny) ;;
    --no-install) install=0 ;;
    --budget) budget=$2; shift ;;
    --only) only=,$2,; shift ;;
    *) echo "usage: bench/gpu.sh [--out DIR] [--smoke | --tier] [--tiny] [--no-install] [--budget SECONDS] [--only A,B]" >&2; exit 2 ;;
  esac
  shift
done
python=${PYTHON:-python3}
mkdir -p "$out"
start=$SECONDS

if ((install)); then
  # The host has torch, transformers and peft; trl, bitsandbytes, the pinned transformers and
  # pytest (for the tier) come from .whl/ (no index, no dependency resolution: exactly the carried files).
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [[ $mode == smoke ]]; then
  "$python" bench/gpu_smoke.py "$out/gpu-smoke.json" 2>&1 | tee "$out/gpu-smoke.log" | grep -E '"family"|Error|error:' | cut -c1-400
  echo "smoke exit: ${PIPESTATUS[0]}"
  exit 0
fi

# run_section NAME CAP NEED: at most CAP seconds, started only if NEED seconds of budget are left.
run_section() {
  local name=$1 cap=$2 need=$3 left limit rc status
  [[ -z $only || $only == *,$name,* ]] || return 0
  left=$((budget - (SECONDS - start)))
  if ((left < need)); then
    status="skipped: ${left}s of the budget left, needs ${need}s"
  else
    limit=$((cap < left ? cap : left))
    # Inside, no new measurement starts in the last 20 s (imports and teardown take about that).
    timeout -k 10 "$limit" "$python" bench/gpu_bench.py "$name" --out "$out" "${tiny[@]}" --seconds $((limit > 40 ? limit - 20 : 20)) \
      >"$out/$name.log" 2>&1
    rc=$?
    case $rc in
      0) status=ok ;;
      124 | 137) status="timeout after ${limit}s" ;;
      *) status="exit $rc: $(grep -E 'Error|error' "$out/$name.log" | tail -1 | cut -c1-200)" ;;
    esac
  fi
  echo "$status" >"$out/$name.status"
  echo "[$((SECONDS - start))s] $name: $status"
}

# run_tier CAP NEED: `pytest -m gpu tests/gpu tests/test_memory_plan.py` (the tier and the memory plan against the
# allocator peak; the dry run on CPU with --tiny), at most CAP seconds.
# SIGINT at the limit: pytest stops, still writes the JUnit file, and the measurements JSON is
# rewritten after every test anyway.
run_tier() {
  local cap=$1 need=$2 left limit rc status dry=()
  [[ -z $only || $only == *,tier,* ]] || return 0
  left=$((budget - (SECONDS - start)))
  ((${#tiny[@]})) && dry=(QABENCH_GPU_DRY_RUN=1)
  if ((left < need)); then
    status="skipped: ${left}s of the budget left, needs ${need}s"
  elif ! "$python" -c "import pytest" 2>/dev/null; then
    status="skipped: no pytest (carry its wheels in .whl/, docs/gpu-checks.md)"
  else
    limit=$((cap < left ? cap : left))
    env "${dry[@]}" QABENCH_GPU_MEASUREMENTS="$out/gpu-tier-measurements.json" timeout -s INT -k 20 "$limit" \
      "$python" -m pytest -m gpu tests/gpu tests/test_memory_plan.py -q -rA -p no:cacheprovider --junitxml="$out/gpu-tier.xml" >"$out/tier.log" 2>&1
    rc=$?
    case $rc in
      0) status=ok ;;
      1) status="failed: $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$out/tier.log" | tail -1 | tr -d '=' | cut -c1-200)" ;;
      124 | 137) status="timeout after ${limit}s" ;;
      *) status="exit $rc: $(grep -E 'Error|error' "$out/tier.log" | tail -1 | cut -c1-200)" ;;
    esac
  fi
  echo "$status" >"$out/tier.status"
  echo "[$((SECONDS - start))s] tier: $status"
}

if [[ $mode == tier ]]; then
  run_tier $((budget - (SECONDS - start))) 30
  "$python" bench/gpu_bench.py report --out "$out" >/dev/null
  sed -n '/^### GPU tier/,/^### Targets/p' "$out/gpu-bench.md" | sed '$d'
  exit 0
fi

# Expected on an H100: env ~10 s, tier ~150 s (the static-cache compile is most of it), Gemma
# generation ~40 s, QLoRA ~90 s (building the 7B shape and quantizing it included), speculative
# ~40 s, Llama generation ~60 s, compiled ~120 s. The tier comes first: it checks that the paths
# the benchmark times give the right answers.
run_section env 60 20
# The dry run's CPU is far slower than a GPU at the same tests (~3.5 min on 2 busy cores).
run_tier $((${#tiny[@]} ? 420 : 200)) 60
run_section generation-gemma-2b 120 60
run_section qlora-llama-2-7b 180 90
run_section speculative-gemma-2b 90 45
run_section generation-llama-2-7b 120 60
run_section compiled-gemma-2b 150 90
"$python" bench/gpu_bench.py report --out "$out"
echo "total: $((SECONDS - start)) s of a ${budget} s budget"
