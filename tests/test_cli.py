"""Command-line exit codes: 2 for the user's mistakes, 3 for infrastructure failures."""

from __future__ import annotations

import socket
import subprocess
import sys

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


def test_run_of_a_missing_manifest_file_exits_2_without_traceback():
    result = subprocess.run([sys.executable, "-m", "runner", "run", "nope.yaml"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nope.yaml" in result.stderr


def test_report_on_a_missing_folder_exits_2(tmp_path, capsys):
    from analysis.cli import main as analysis_main

    assert analysis_main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
