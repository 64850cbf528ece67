"""Checked-in generated files stay in step with their generators."""

from __future__ import annotations

import filecmp

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
