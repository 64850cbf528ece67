"""Command-line exit codes: 2 for the user's mistakes, 3 for infrastructure failures."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import REPO
from runner.cli import main


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fetch_from_an_unreachable_server_exits_3_and_names_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/unifiedqa"
    assert main(["data", "fetch", "boolq", "--to", str(tmp_path), "--base-url", url]) == 3
    assert f"{url}/boolq/train.tsv" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.tsv*")), "nothing half-written"


def test_fetch_of_an_unknown_dataset_exits_2(tmp_path, capsys):
    assert main(["data", "fetch", "boolqq", "--to", str(tmp_path)]) == 2
    assert "boolqq" in capsys.readouterr().err


def test_fetch_of_a_misspelt_dataset_exits_2_suggesting_the_known_name(tmp_path, capsys):
    assert main(["data", "fetch", "sqaud2", "--to", str(tmp_path)]) == 2
    assert "error: unknown dataset 'sqaud2' (did you mean 'squad2'?); known datasets: " in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_fetch_help_lists_every_official_dataset_with_its_format(capsys):
    from runner.data import OFFICIAL_DATASETS

    with pytest.raises(SystemExit) as info:
        main(["data", "fetch", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    rows = [row for row in rows if row[0] in OFFICIAL_DATASETS]
    assert {row[0]: row[1] for row in rows} == {name: spec.format for name, spec in OFFICIAL_DATASETS.items()}
    assert "the paper's 8 seen datasets" in out and "the paper's 12 unseen datasets" in out


def test_run_of_a_missing_manifest_file_exits_2_without_traceback():
    result = subprocess.run([sys.executable, "-m", "runner", "run", "nope.yaml"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nope.yaml" in result.stderr


def test_report_on_a_missing_folder_exits_2(tmp_path, capsys):
    from analysis.cli import main as analysis_main

    assert analysis_main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
