"""Models load from packaged GGUFs, local folders and (online only) the hub."""

from __future__ import annotations



from runner.cli import main
from runner.manifest import load_manifest
from runner.models import PACKAGED_MODELS, load_model, model_cache_dir


def test_packaged_smollm2_converts_once_into_a_plain_saved_model(tiny_manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("QABENCH_MODEL_CACHE", str(tmp_path / "cache"))
    manifest = load_manifest(tiny_manifest("smollm2", model={"package": "smollm2-135m"}))
    loaded = load_model(manifest)
    folders = list(model_cache_dir().iterdir())
    assert len(folders) == 1 and (folders[0] / "config.json").is_file()
    assert "quantization_config" not in (folders[0] / "config.json").read_text(), "loads like any saved model"
    identity = loaded.identity.as_dict()
    assert identity["source"] == "package:smollm2-135m" and len(identity["gguf_sha256"]) == 64
    assert loaded.model.config.model_type == "llama" and loaded.tokenizer.padding_side == "left"

    import torch

    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0, ids.input_ids.shape[1]:]), "real pretrained weights"

    mtime = (folders[0] / "config.json").stat().st_mtime_ns
    load_model(manifest)
    assert (folders[0] / "config.json").stat().st_mtime_ns == mtime, "second load reuses the conversion"


def test_every_packaged_model_is_locatable():
    for name, package in PACKAGED_MODELS.items():
        assert package.locate().is_file(), name


def test_hub_model_missing_from_the_offline_cache_is_a_user_error(tiny_manifest, tmp_path, monkeypatch, capsys):
    # A retry would find the same empty cache: exit 2, not 3 (tests/test_hub_errors.py has the other causes).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    manifest = tiny_manifest("hub", model={"hub": "google/gemma-2b", "revision": "main"})
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "google/gemma-2b" in err and "unset HF_HUB_OFFLINE" in err and "Traceback" not in err
