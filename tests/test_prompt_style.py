"""One prompt format per comparison: base models get plain prompts even when their tokenizer
ships a chat template, instruction-tuned ones (declared or named so) get the template; the
format is shown by validate, recorded on every prediction and part of the stage identity."""

from __future__ import annotations

import pytest

from conftest import stage_folders
from runner.cli import main
from runner.manifest import Manifest
from runner.shards import decode_shard


def _manifest(model: dict, **icl) -> Manifest:
    return Manifest.model_validate({
        "name": "x", "model": model, "data": {"root": "data", "datasets": ["boolq"]}, "method": {"kind": "none"}, "icl": icl,
    })


@pytest.mark.parametrize("hub, tuned", [
    ("google/gemma-2b", False), ("google/gemma-2b-it", True), ("google/gemma-7b-it", True),
    ("meta-llama/Llama-2-7b-hf", False), ("meta-llama/Llama-2-7b-chat-hf", True),
    ("mistralai/Mistral-7B-v0.1", False), ("mistralai/Mistral-7B-Instruct-v0.2", True),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True), ("HuggingFaceTB/SmolLM2-135M", False),
    ("someone/chatbot-base", False), ("dbmdz/bert-base-italian", False),
])
def test_instruction_tuning_is_read_from_the_model_name(hub, tuned):
    from runner.prompt_style import requested_style

    assert requested_style(_manifest({"hub": hub})) == ("chat" if tuned else "plain")


def test_declared_tuning_and_explicit_rules_override_the_name():
    from runner.prompt_style import requested_style

    assert requested_style(_manifest({"hub": "google/gemma-2b", "instruction_tuned": True})) == "chat"
    assert requested_style(_manifest({"hub": "google/gemma-2b-it", "instruction_tuned": False})) == "plain"
    assert requested_style(_manifest({"hub": "google/gemma-2b"}, chat_template="always")) == "chat"
    assert requested_style(_manifest({"hub": "google/gemma-2b-it"}, chat_template="never")) == "plain"
    assert requested_style(_manifest({"package": "gemma3-270m"})) == "plain"
    assert requested_style(_manifest({"package": "smollm2-135m"})) == "chat"


def test_prompt_format_changes_the_evaluation_and_training_identity():
    from runner.identity import evaluation_request, training_request

    base, declared = _manifest({"hub": "google/gemma-2b"}), _manifest({"hub": "google/gemma-2b", "instruction_tuned": True})
    assert evaluation_request(base) != evaluation_request(declared)
    assert training_request(base)["prompt"]["style"] == "plain" and training_request(declared)["prompt"]["style"] == "chat"


@pytest.fixture
def templated_model(tiny_models, tmp_path):
    """The tiny Llama saved with a chat template in its tokenizer, as Gemma's base tokenizer has."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "templated-base"
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("declared, expected", [(None, "plain"), (True, "chat")])
def test_a_base_model_with_a_template_gets_plain_prompts_unless_declared_tuned(tiny_manifest, templated_model, tmp_path, capsys, declared, expected):
    model = {"path": str(templated_model), **({} if declared is None else {"instruction_tuned": declared})}
    manifest = tiny_manifest(f"style-{expected}", model=model)
    assert main(["validate", str(manifest)]) == 0
    assert f"{expected} prompts" in capsys.readouterr().err
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run, _ = stage_folders(manifest, storage)
    rows = [r for shard in sorted((run / "predictions").glob("*.parquet")) for r in decode_shard(shard.read_bytes(), str(shard)).to_pylist()]
    assert {r["prompt_format"] for r in rows} == {expected}
    assert all(r["prompt"].startswith("<s><|user|>") == (expected == "chat") for r in rows)
