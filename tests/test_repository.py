"""Checked-in generated files stay in step with their generators."""

from __future__ import annotations

import filecmp
import json

import pytest
import yaml

from conftest import REPO
from runner.cli import main


def test_checked_in_synthetic_data_matches_the_generator(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path)]) == 0
    shipped = REPO / "data" / "synthetic"
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.tsv"))
    assert len(files) == 8
    for relative in files:
        assert filecmp.cmp(tmp_path / relative, shipped / relative, shallow=False), f"run `just docs`: {relative}"


def test_readme_quick_start_and_ci_run_the_same_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "just test" in readme and "just test" in ci and "just setup demo" in readme


SCHEMA = REPO / "manifests" / "schema.json"
GRID_FILES = {REPO / "manifests" / "grid.yaml", REPO / "manifests" / "seed-study.yaml"}


def _shipped_manifests() -> list:
    return sorted(p for p in (REPO / "manifests").rglob("*.yaml") if p not in GRID_FILES)


def test_schema_file_is_what_runner_schema_prints(capsys):
    assert main(["schema"]) == 0
    assert SCHEMA.read_text() == capsys.readouterr().out, "run `just docs`"


def test_every_shipped_manifest_points_editors_at_the_schema_file():
    manifests = _shipped_manifests()
    assert len(manifests) > 100  # examples, demo and both generated folders
    for manifest in manifests:
        first = manifest.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), f"{manifest}: first line {first!r}"
        target = manifest.parent / first.removeprefix("# yaml-language-server: $schema=")
        assert target.resolve() == SCHEMA and SCHEMA.is_file(), manifest
    for grid in GRID_FILES:  # grids are not manifests: the manifest schema would flag their axes
        assert "$schema" not in grid.read_text().splitlines()[0]


def test_every_shipped_manifest_is_valid_against_the_schema_file_as_an_editor_reads_it():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    for manifest in _shipped_manifests():
        problems = [f"{'.'.join(map(str, e.path))}: {e.message[:200]}" for e in validator.iter_errors(yaml.safe_load(manifest.read_text()))]
        assert not problems, f"{manifest}: {problems}"
