"""Hub revisions resolve to commits (part of the training identity); a missing revision is a clear exit 2.

A small HTTP server on 127.0.0.1 answers huggingface_hub's model-info requests as the hub does
(`GET /api/models/<repo>/revision/<rev>`: 200 with the commit `sha`, or 404 with
`X-Error-Code: RevisionNotFound`), so the real client code runs without a network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, SYNTHETIC, write_manifest

COMMITS = {"main": "a" * 40, "v1.0": "b" * 40}


@pytest.fixture
def fake_hub():
    """The hub's model-info endpoint for `org/tiny`; COMMITS maps revision → commit (mutable)."""
    commits = dict(COMMITS)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            prefix = "/api/models/org/tiny/revision/"
            revision = self.path.split("?")[0][len(prefix):] if self.path.startswith(prefix) else None
            if revision in commits:
                body = json.dumps({"id": "org/tiny", "sha": commits[revision], "siblings": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            else:
                body = b'{"error": "Invalid rev id"}'
                self.send_response(404)
                self.send_header("X-Error-Code", "RevisionNotFound" if revision is not None else "RepoNotFound")
                self.send_header("X-Error-Message", "Invalid rev id")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", commits
    server.shutdown()


def _runner(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _hub_manifest(folder: Path, name: str, small_data: Path, revision: str | None) -> Path:
    model = {"hub": "org/tiny", **({"revision": revision} if revision else {})}
    return write_manifest(folder, name, model=model, data={"root": str(small_data), "datasets": SYNTHETIC}, method={"kind": "lora"})


def test_revision_that_does_not_exist_is_a_user_error_naming_it(fake_hub, small_data, tmp_path):
    endpoint, _ = fake_hub
    manifest = _hub_manifest(tmp_path, "missing-revision", small_data, "no-such-tag")
    result = _runner(endpoint, "run", str(manifest), "--storage", str(tmp_path / "runs"))
    assert result.returncode == 2, result.stderr
    assert "model revision 'no-such-tag' does not exist in org/tiny" in result.stderr and "Traceback" not in result.stderr


def test_training_identity_follows_the_commit_a_branch_resolves_to(fake_hub, small_data, tmp_path):
    endpoint, commits = fake_hub
    branch = _hub_manifest(tmp_path / "a", "follows-main", small_data, None)
    pinned = _hub_manifest(tmp_path / "b", "pinned", small_data, "a" * 40)
    tagged = _hub_manifest(tmp_path / "c", "tagged", small_data, "v1.0")

    def trainings(*manifests: Path) -> list[str]:
        result = _runner(endpoint, "plan", *map(str, manifests), "--storage", str(tmp_path / "runs"), "--json")
        assert result.returncode == 0, result.stderr
        return [t["key"] for t in json.loads(result.stdout)["trainings"]]

    # main resolves to the pinned commit: one training; the tag points elsewhere: another.
    same, other = trainings(branch, pinned, tagged)
    assert not same.startswith("~") and not other.startswith("~")
    commits["main"] = "c" * 40  # a new commit lands on main
    moved = trainings(branch, pinned)
    assert len(moved) == 2 and same in moved, "the pinned manifest keeps its training; main now names new weights"


def test_offline_resolution_uses_the_local_cache_refs(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from runner.models import resolve_revision

    cache = tmp_path / "hub"
    (cache / "models--org--cached" / "refs").mkdir(parents=True)
    (cache / "models--org--cached" / "refs" / "main").write_text("d" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_revision("org/cached", None) == "d" * 40
    assert resolve_revision("org/cached", "e" * 40) == "e" * 40, "a pinned commit needs no lookup"
    from runner.errors import UserError

    with pytest.raises(UserError, match="unset HF_HUB_OFFLINE"):  # a retry finds the same cache
        resolve_revision("org/not-cached", "main")
