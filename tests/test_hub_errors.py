"""A hub model that cannot be had is reported by cause: exit 2 when a retry cannot help (gated,
missing, offline without the weights), exit 3 when one can (the hub down, the network gone).

A small HTTP server on 127.0.0.1 answers as the hub does (`GET /api/models/<repo>[/revision/<rev>]`
for model info, `HEAD`/`GET /<repo>/resolve/<rev>/<file>` for files; errors carry the hub's
`X-Error-Code` header), and `python -m runner run` runs against it through HF_ENDPOINT, so the
real huggingface_hub and transformers code decides what is raised.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, SYNTHETIC, write_manifest

COMMIT = "a" * 40
# The hub client retries 5xx and network errors with 1, 2, 4, 8, 8 s waits between attempts; the
# child skips the waits (every attempt is still made) so a test takes seconds, not minutes.
RUNNER = (
    "import sys, types, huggingface_hub.utils._http as http; http.time = types.SimpleNamespace(sleep=lambda seconds: None); "
    "from runner.cli import main; sys.exit(main())"
)
GATED = ("X-Error-Code", "GatedRepo"), ("X-Error-Message", "Access to model org/gated is restricted and you are not in the authorized list.")
# repo → (model info answer, file answer): a status and its headers, or 200 for a normal answer.
BEHAVIOUR = {
    # The hub shows a gated repository's info to anyone; only its files are refused.
    "org/gated": ((200, ()), (401, GATED)),
    "org/gated-info": ((403, GATED), (403, GATED)),
    "org/missing": ((404, (("X-Error-Code", "RepoNotFound"),)), (404, (("X-Error-Code", "RepoNotFound"),))),
    "org/down": ((503, ()), (503, ())),
    "org/files-down": ((200, ()), (500, ())),
    # A repository without a transformers model in it (GGUF-only, adapter-only): every file is 404.
    "org/no-config": ((200, ()), (404, (("X-Error-Code", "EntryNotFound"), ("X-Error-Message", "Entry not found")))),
}

# The files model info lists (the real hub lists every file; none here means "not said").
SIBLINGS = {"org/no-config": [{"rfilename": ".gitattributes"}, {"rfilename": "model-q4_k_m.gguf"}]}


@pytest.fixture(scope="module")
def hub():
    """(endpoint, requests seen): the hub's answers for the repositories in BEHAVIOUR."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's names)
            self._answer()

        def do_HEAD(self):  # noqa: N802
            self._answer()

        def _answer(self):
            path = self.path.split("?")[0]
            seen.append(f"{self.command} {path}")
            info = path.startswith("/api/models/")
            repo = "/".join(path.removeprefix("/api/models/").lstrip("/").split("/")[:2])
            status, headers = BEHAVIOUR.get(repo, ((404, (("X-Error-Code", "RepoNotFound"),)),) * 2)[0 if info else 1]
            listing = info and "/tree/" in path  # a folder's files: none
            answer = ([] if listing else {"id": repo, "sha": COMMIT, "siblings": SIBLINGS.get(repo, []), "gated": "manual"}) if status == 200 else {"error": "no"}
            body = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in (("Content-Type", "application/json"), *headers):
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free once closed: a connection is refused


def _run(manifest: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    environment.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", **env)
    command = [sys.executable, "-c", RUNNER, "run", str(manifest), "--storage", str(tmp_path / "runs")]
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=180)


def _manifest(tmp_path: Path, small_data: Path, hub_id: str, revision: str | None = None) -> Path:
    model = {"hub": hub_id, **({"revision": revision} if revision else {})}
    name = hub_id.split("/")[1]
    return write_manifest(tmp_path / "m", name, model=model, data={"root": str(small_data), "datasets": SYNTHETIC}, method={"kind": "none"})


def _error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return "\n".join(line for line in result.stderr.splitlines() if line.startswith("error:"))


@pytest.mark.parametrize("repo", ["org/gated", "org/gated-info"])
def test_gated_model_is_a_user_error_naming_its_licence_page_and_hf_token(hub, small_data, tmp_path, repo):
    endpoint, seen = hub
    result = _run(_manifest(tmp_path, small_data, repo), tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")
    error = _error(result)
    assert result.returncode == 2, result.stderr
    assert f"{repo} is gated: accept its licence at https://huggingface.co/{repo}" in error and "HF_TOKEN" in error
    if repo == "org/gated":  # model info answered; the refusal came with the first file
        assert f"GET /api/models/{repo}/revision/main" in seen and any(s.startswith(f"HEAD /{repo}/resolve/{COMMIT}/") for s in seen)


def test_model_missing_from_the_hub_is_a_user_error(hub, small_data, tmp_path):
    endpoint, _ = hub
    result = _run(_manifest(tmp_path, small_data, "org/missing"), tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")
    assert result.returncode == 2, result.stderr
    assert "org/missing: no such model on the hub, or it is private" in _error(result)


def test_a_repository_without_the_models_files_is_a_user_error_not_a_retry(hub, small_data, tmp_path):
    endpoint, _ = hub
    result = _run(_manifest(tmp_path, small_data, "org/no-config"), tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")
    assert result.returncode == 2, result.stderr
    error = _error(result)
    assert f"org/no-config at {COMMIT} has no config.json: not a transformers model repository" in error
    assert f"https://huggingface.co/org/no-config/tree/{COMMIT}" in error


@pytest.mark.parametrize("repo, when", [("org/down", "resolve the revision of"), ("org/files-down", "download the tokenizer of")])
def test_hub_server_error_is_an_infrastructure_error_worth_retrying(hub, small_data, tmp_path, repo, when):
    endpoint, _ = hub
    result = _run(_manifest(tmp_path, small_data, repo), tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")
    assert result.returncode == 3, result.stderr
    error = _error(result)
    assert f"cannot {when} {repo} on the hub ({endpoint})" in error and "50" in error


def test_unreachable_hub_is_an_infrastructure_error_worth_retrying(small_data, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result = _run(_manifest(tmp_path, small_data, "org/anything"), tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")
    assert result.returncode == 3, result.stderr
    assert f"cannot resolve the revision of org/anything on the hub ({endpoint})" in _error(result)


@pytest.mark.parametrize("revision", [None, COMMIT], ids=["branch", "pinned-commit"])
def test_offline_without_the_model_in_the_cache_says_to_unset_hf_hub_offline(small_data, tmp_path, revision):
    # A branch fails resolving the revision from the cache's refs; a pinned commit needs no
    # lookup and fails when transformers looks for the files.
    endpoint = f"http://127.0.0.1:{_closed_port()}"  # never asked: offline means no request at all
    result = _run(_manifest(tmp_path, small_data, "org/not-downloaded", revision), tmp_path, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="1")
    assert result.returncode == 2, result.stderr
    error = _error(result)
    assert "org/not-downloaded" in error and "is not in the local hub cache" in error
    assert "unset HF_HUB_OFFLINE to download it, or download it first (hf download org/not-downloaded)" in error
