"""Grid files: expansion is deterministic, the checked-in folders are current, bad cells are named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import REPO
from runner.cli import main
from runner.grid import GENERATED, compare, expected_files

GRIDS = [("grid.yaml", "grid"), ("seed-study.yaml", "seed-study")]


def _cells(folder: str) -> list[dict]:
    return [yaml.safe_load(f.read_text()) for f in sorted((REPO / "manifests" / folder).glob("*.yaml"))]


@pytest.mark.parametrize("grid, folder", GRIDS)
def test_checked_in_grid_folder_is_what_its_grid_expands_to(grid, folder):
    difference = compare(expected_files(REPO / "manifests" / grid, REPO / "manifests" / folder), REPO / "manifests" / folder)
    assert not difference, f"run `just docs`: {difference}"


@pytest.mark.parametrize("grid, folder", GRIDS)
def test_expand_check_passes_on_the_checked_in_folder(grid, folder, capsys):
    assert main(["expand", str(REPO / "manifests" / grid), "--out", str(REPO / "manifests" / folder), "--check"]) == 0


def test_two_expansions_in_fresh_processes_are_byte_identical(tmp_path):
    # Different hash seeds and working folders: nothing may depend on set order or on the cwd.
    outputs = []
    for seed, cwd in (("1", REPO), ("2", tmp_path)):
        out = tmp_path / f"out-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-m", "runner", "expand", str(REPO / "manifests" / "grid.yaml"), "--out", str(out)],
            cwd=cwd, env=env, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        outputs.append({f.name: f.read_bytes() for f in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 81


@pytest.mark.parametrize("grid, folder", GRIDS)
def test_generated_manifests_validate_once_their_data_exists(grid, folder, tmp_path, capsys):
    # `validate` also checks that data files exist and hold enough shots: give each dataset the
    # checked-in synthetic set of its answer format where the cells look.
    from runner.data import DATASET_FORMATS

    copy = tmp_path / "manifests" / folder
    shutil.copytree(REPO / "manifests" / folder, copy)
    for cell in _cells(folder):
        root = (copy / cell["data"]["root"]).resolve()
        for dataset in cell["data"]["datasets"]:
            (root / dataset).mkdir(parents=True, exist_ok=True)
            for split in ("train", "dev"):
                source = REPO / "data" / "synthetic" / f"synthetic_{DATASET_FORMATS[dataset]}" / f"{split}.tsv"
                shutil.copyfile(source, root / dataset / f"{split}.tsv")
    assert main(["validate", str(copy)]) == 0, capsys.readouterr().err


def test_grid_has_every_model_method_prompt_and_decoding_asked_for():
    cells = _cells("grid")
    models = {c["model"]["hub"] for c in cells}
    assert models == {"google/gemma-2b", "google/gemma-7b", "meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1"}
    assert {c["method"]["kind"] for c in cells} == {"none", "lora", "qlora", "adalora", "ia3", "prompt_tuning"}
    shots = {(c["method"]["kind"], c["icl"]["shots"]) for c in cells}
    assert {s for k, s in shots if k == "none"} == {0, 1, 3, 5}
    assert {s for k, s in shots if k != "none"} == {0}
    speculative = [c for c in cells if c["decoding"]["kind"] == "speculative"]
    assert {c["model"]["hub"] for c in speculative} == {"google/gemma-7b"}
    assert {c["decoding"]["draft"]["hub"] for c in speculative} == {"google/gemma-2b"}
    assert {c["decoding"]["kind"] for c in cells} == {"greedy", "prompt_lookup", "speculative"}
    # The seed axis gives every cell its seeds, so untrained cells carry a train block too; a method
    # that trains nothing ignores it (its evaluation's identity holds no training settings).
    assert all((c["train"]["seed"], c["icl"]["seed"]) == (0, 0) for c in cells)


def test_seed_study_keeps_the_published_settings():
    cells = _cells("seed-study")
    trained = [c for c in cells if c["method"]["kind"] != "none"]
    assert trained and all(
        (c["train"]["learning_rate"], c["train"]["lr_scheduler"], c["train"]["warmup_steps"], c["train"]["steps"]) == (2e-5, "linear", 30, 200)
        and (c["train"]["batch_size"], c["train"]["weight_decay"], c["train"]["max_grad_norm"], c["train"]["max_seq_length"]) == (8, 0.001, 0.3, 512)
        for c in trained
    )
    qlora = next(c for c in trained if c["method"]["kind"] == "qlora")["method"]
    assert (qlora["bits"], qlora["quant_type"], qlora["double_quant"], qlora["compute_dtype"]) == (4, "nf4", True, "bfloat16")
    assert (qlora["r"], qlora["alpha"], qlora["dropout"]) == (8, 8, 0.05)
    seven = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert all(c["method"]["target_modules"] == seven for c in trained if c["method"]["kind"] in ("qlora", "adalora", "ia3"))
    tuning = next(c for c in trained if c["method"]["kind"] == "prompt_tuning")["method"]
    assert (tuning["num_virtual_tokens"], tuning["init"]) == (8, "text")
    assert {c["decoding"]["max_new_tokens"] for c in cells} == {20}
    instructions = {c["icl"]["shots"] > 0: c["icl"]["instruction"] for c in cells}
    assert instructions == {False: "Answer this question truthfully", True: "Answer the question truthfully. Follow these examples:"}
    headers = [f.read_text() for f in (REPO / "manifests" / "seed-study").glob("*qlora*.yaml")]
    assert headers and all("lm_head" in h.split("\nname:")[0] for h in headers), "the dropped lm_head is explained in the header"


BAD_GRID = """\
name: "{model}-{method}"
base:
  data: {root: ../data, datasets: [boolq]}
  decoding: {batch_size: 8}
axes:
  model:
    - label: gemma
      set: {model.hub: google/gemma-2b}
    - label: llama
      set: {model.hub: meta-llama/Llama-2-7b-hf}
  method:
    - label: none
      set: {method: {kind: none}}
    - label: lora
      set: {method: {kind: lora, r: 0}}
"""


def test_axis_value_making_an_invalid_manifest_names_the_cell_and_the_field(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(BAD_GRID)
    result = subprocess.run([sys.executable, "-m", "runner", "expand", str(grid), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    # Reported at the line of the axis value that set the bad field, once for the two cells it breaks.
    expected = f"error: {grid}:15: cell model=gemma method=lora (and 1 more cell(s)): method.r: Input should be greater than or equal to 1 (set by method=lora)"
    assert expected in lines, result.stderr
    assert not (tmp_path / "out").exists(), "nothing is written when a cell is invalid"


@pytest.mark.parametrize(
    "change, line, expected",
    [
        (("  model:\n", "  model:\n    - label: gemma\n      set: {model.hub: x/y}\n"), 9, "axes.model.1.label: label 'gemma' appears twice in this axis"),
        (('name: "{model}-{method}"', 'name: "{model}-{methd}"'), 1, "name: unknown axis 'methd' in the template"),
        (('name: "{model}-{method}"', 'name: "{model}"'), 1, "is also the name of cell model=gemma method=none"),
        (("      set: {method: {kind: none}}", "      sett: {method: {kind: none}}"), 13, "axes.method.0.sett: unknown key"),
        (("base:\n", "base:\n  name: fixed\n"), 2, "base: the name comes from the grid's `name` template"),
        (("    - label: lora\n", "    - label: lora\n      comment: x\n      set: {decoding.kind: sample, model.hub: x/y}\n    - label: lora2\n"), 16, "model.hub: overlaps model.hub, set by model=gemma"),
    ],
)
def test_grid_mistakes_are_reported_at_their_line(tmp_path, capsys, change, line, expected):
    grid = tmp_path / "grid.yaml"
    old, new = change
    assert old in BAD_GRID
    grid.write_text(BAD_GRID.replace(old, new, 1).replace("r: 0", "r: 8"))
    assert main(["expand", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert any(l.startswith(f"error: {grid}:{line}: ") and expected in l for l in err.splitlines()), err


def test_exclude_rules_must_name_existing_axes_and_labels(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(BAD_GRID.replace("r: 0", "r: 8") + "exclude:\n  - {model: mistral, methd: none}\n")
    assert main(["expand", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{grid}:17: exclude.0.model: unknown label 'mistral'; model has gemma, llama" in err
    assert f"{grid}:17: exclude.0.methd: unknown axis; axes: model, method" in err


def test_expand_replaces_only_its_own_files_and_check_reports_stale_ones(tmp_path, capsys):
    grid, out = tmp_path / "grid.yaml", tmp_path / "out"
    grid.write_text(BAD_GRID.replace("r: 0", "r: 8"))
    assert main(["expand", str(grid), "--out", str(out)]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["gemma-lora.yaml", "gemma-none.yaml", "llama-lora.yaml", "llama-none.yaml"]
    assert all(f.read_text().startswith(GENERATED) for f in out.iterdir())
    (out / "mine.yaml").write_text("name: mine\n")
    grid.write_text(BAD_GRID.replace("r: 0", "r: 8") + "exclude:\n  - {model: llama}\n")
    assert main(["expand", str(grid), "--out", str(out), "--check"]) == 1
    assert "llama-none.yaml: stale" in capsys.readouterr().err
    assert main(["expand", str(grid), "--out", str(out)]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["gemma-lora.yaml", "gemma-none.yaml", "mine.yaml"]
    assert main(["expand", str(grid), "--out", str(out), "--check"]) == 0
    (out / "gemma-none.yaml").write_text((out / "gemma-none.yaml").read_text() + "# edited\n")
    assert main(["expand", str(grid), "--out", str(out), "--check"]) == 1
    assert "gemma-none.yaml: differs" in capsys.readouterr().err


def test_expanded_manifests_name_the_schema_beside_the_grid_and_are_still_replaced_as_generated(tmp_path, capsys):
    grid, out = tmp_path / "grid.yaml", tmp_path / "generated" / "study"
    grid.write_text(BAD_GRID.replace("r: 0", "r: 8"))
    (tmp_path / "schema.json").write_text("{}\n")
    assert main(["expand", str(grid), "--out", str(out)]) == 0
    for file in out.iterdir():
        first, second = file.read_text().splitlines()[:2]
        assert first == "# yaml-language-server: $schema=../../schema.json" and second.startswith(GENERATED)
    grid.write_text(BAD_GRID.replace("r: 0", "r: 8") + "exclude:\n  - {model: llama}\n")
    assert main(["expand", str(grid), "--out", str(out)]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["gemma-lora.yaml", "gemma-none.yaml"], "schema-headed files are recognised as generated"


def test_expand_refuses_to_overwrite_a_file_it_did_not_write(tmp_path, capsys):
    grid, out = tmp_path / "grid.yaml", tmp_path / "out"
    grid.write_text(BAD_GRID.replace("r: 0", "r: 8"))
    out.mkdir()
    (out / "gemma-none.yaml").write_text("name: hand-written\n")
    assert main(["expand", str(grid), "--out", str(out)]) == 2
    assert "gemma-none.yaml exist but were not generated by expand" in capsys.readouterr().err
    assert (out / "gemma-none.yaml").read_text() == "name: hand-written\n"


def test_expand_does_not_import_torch():
    code = textwrap.dedent(
        """
        import sys, tempfile
        from runner.cli import main
        rc = main(['expand', 'manifests/grid.yaml', '--out', 'manifests/grid', '--check'])
        assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'
        sys.exit(rc)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
