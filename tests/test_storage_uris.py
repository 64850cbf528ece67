"""Storage locations (runner/storage_uri.py): where each form lands, which are refused, credentials redacted, trust_remote_code warned about."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import seaweed as sw
from analysis.cli import main as analysis_main
from runner.cli import main
from runner.console import error, log
from runner.storage import open_store
from runner.storage_uri import choose_storage, redact

SECRET = "topsecret-7f3a9c"
KEY_ID = "AKIAEXAMPLEKEY42"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A working folder `cwd/` and a manifest folder `manifests/` side by side; QABENCH_STORAGE unset."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "manifests").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("QABENCH_STORAGE", raising=False)
    return tmp_path


# (--storage, output.storage, QABENCH_STORAGE) → where a key lands, relative to tmp_path.
RESOLUTION = [
    ("runs", None, None, "cwd/runs"),
    ("../shared", "ignored", None, "shared"),
    (None, "../elsewhere", None, "elsewhere"),
    (None, "runs", None, "manifests/runs"),
    (None, "runs", "env-runs", "manifests/runs"),
    (None, None, "env-runs", "cwd/env-runs"),
    (None, None, None, "cwd/runs"),
    ("{tmp}/abs", None, None, "abs"),
    ("file://{tmp}/file-uri", None, None, "file-uri"),
    ("file://localhost{tmp}/localhost", None, None, "localhost"),
    (None, "file://{tmp}/from-manifest", None, "from-manifest"),
    ("file://{tmp}/with%20space", None, None, "with space"),
]


@pytest.mark.parametrize("command_line, manifest_storage, environment, lands", RESOLUTION)
def test_each_storage_form_writes_where_the_resolution_table_says(places, monkeypatch, command_line, manifest_storage, environment, lands):
    def fill(text):
        return text.format(tmp=places) if text else text

    if environment:
        monkeypatch.setenv("QABENCH_STORAGE", environment)
    store = open_store(choose_storage(fill(command_line), fill(manifest_storage), places / "manifests"))
    store.write_bytes("run/x.txt", b"x")
    assert (places / lands / "run" / "x.txt").read_bytes() == b"x"
    assert [p for p in places.rglob("x.txt")] == [places / lands / "run" / "x.txt"]


def test_a_plain_string_opens_relative_to_the_working_folder(places):
    """What `--storage`, `pull`, `score` and analysis SOURCE pass: a relative folder is below the working folder."""
    open_store("runs").write_bytes("k", b"1")
    assert (places / "cwd" / "runs" / "k").exists()


REFUSED = [
    ("file://runs32", "file:///runs32 (three slashes)"),
    ("file://tmp/x", "file:///tmp/x (three slashes)"),
    ("file:runs", "a file: URI holds an absolute path"),
    ("file://server.example/share", "is read as a host name"),
    ("ftp://host/x", "unsupported storage URI scheme 'ftp'"),
    ("s3://Bad_Bucket/x", "is not a bucket name"),
    ("s3://10.0.0.1/x", "is not a bucket name"),
    ("s3://bucket:9000/x", "the endpoint comes from AWS_ENDPOINT_URL"),
    ("s3:bucket", "s3://BUCKET/PREFIX"),
    (f"s3://{KEY_ID}:{SECRET}@bucket/x", "credentials do not belong in a storage URI"),
    (f"file://{KEY_ID}:{SECRET}@host/x", "credentials do not belong in a storage URI"),
]


@pytest.mark.parametrize("uri, fix", REFUSED)
def test_refused_storage_uris_exit_2_with_one_line_naming_the_fix(places, capsys, uri, fix):
    assert main(["pull", uri, str(places / "dest")]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fix in lines[0] and "Traceback" not in err, err
    assert SECRET not in out + err and KEY_ID not in out + err
    assert not any((places / "cwd").iterdir()) and not (places / "dest").exists()


def test_run_with_a_host_in_a_file_uri_is_refused_before_writing_anything(places, tiny_manifest, capsys):
    assert main(["run", str(tiny_manifest("hosted")), "--storage", "file://runs32"]) == 2
    err = capsys.readouterr().err
    assert "--storage 'file://runs32': 'runs32' is read as a host name" in err and "file:///runs32" in err
    assert not any((places / "cwd").iterdir())


def test_analysis_source_goes_through_the_same_parser(places, capsys):
    assert analysis_main(["report", "file://runs32", "--out", str(places / "report")]) == 2
    assert "file:///runs32 (three slashes)" in capsys.readouterr().err
    assert analysis_main(["report", f"s3://{KEY_ID}:{SECRET}@bucket/x", "--out", str(places / "report")]) == 2
    out, err = capsys.readouterr()
    assert "credentials do not belong" in err and SECRET not in out + err and KEY_ID not in out + err


def test_bad_output_storage_is_a_validation_problem_at_its_line(places, capsys):
    manifest = places / "manifests" / "m.yaml"
    manifest.write_text(
        "name: m\nmodel: {package: gemma3-270m}\ndata: {root: d, datasets: [boolq]}\nmethod: {kind: none}\n"
        f"output:\n  storage: s3://{KEY_ID}:{SECRET}@bucket/runs\n"
    )
    assert main(["validate", str(manifest)]) == 2
    out, err = capsys.readouterr()
    assert f"{manifest}:6: output.storage: credentials do not belong in a storage URI" in err
    assert SECRET not in out + err and KEY_ID not in out + err


def test_redact_hides_the_userinfo_of_every_uri_and_nothing_else():
    text = f'at http://{KEY_ID}:{SECRET}@127.0.0.1:9000/ ("https://u:p@ss@host/x") s3://bucket/k mail a@b file:///x'
    assert redact(text) == 'at http://***@127.0.0.1:9000/ ("https://***@host/x") s3://bucket/k mail a@b file:///x'


def test_every_console_line_is_redacted(capsys):
    error(f"error: s3://{KEY_ID}:{SECRET}@bucket")
    log(f"writing to https://user:{SECRET}@host/runs")
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "s3://***@bucket" in err and "https://***@host/runs" in out


def test_credentials_in_aws_endpoint_url_never_reach_a_message(places, monkeypatch, capsys):
    endpoint = f"http://{KEY_ID}:{SECRET}@127.0.0.1:{sw.free_port()}"
    sw.use(monkeypatch, {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key", "AWS_REGION": sw.REGION,
        "QABENCH_WORKDIR": str(places / "work"), "QABENCH_S3_MAX_ATTEMPTS": "1", "QABENCH_S3_CONNECT_TIMEOUT": "1",
    })
    assert main(["pull", "s3://bucket/runs", str(places / "dest")]) == 3
    out, err = capsys.readouterr()
    assert "cannot reach the S3 endpoint http://***@127.0.0.1:" in err
    assert SECRET not in out + err and KEY_ID not in out + err


def test_output_storage_relative_to_the_manifest_folder_end_to_end(places, tiny_manifest, small_data, capsys):
    """`output.storage: ../elsewhere` lands beside the manifest's folder, whatever the working folder."""
    manifest = tiny_manifest(
        "beside", data={"root": str(small_data), "datasets": ["synthetic_yes_no"], "max_eval_examples": 2}, output={"storage": "../elsewhere"},
    )
    assert manifest.parent == places / "manifests"
    assert main(["run", str(manifest)]) == 0
    capsys.readouterr()
    finished = list((manifest.parent.parent / "elsewhere").rglob("_SUCCESS"))
    assert [p.parent.parent.name for p in finished] == ["beside"]
    assert not any((places / "cwd").iterdir())
    assert main(["plan", str(manifest)]) == 0
    assert f"storage {(manifest.parent.parent / 'elsewhere').as_uri()}" in capsys.readouterr().out


def _model_manifest(folder: Path, name: str, model: dict, decoding: dict | None = None) -> Path:
    path = folder / f"{name}.yaml"
    sections = {"name": name, "model": model, "data": {"root": "data", "datasets": ["boolq"]}, "method": {"kind": "none"}}
    if decoding:
        sections["decoding"] = decoding
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def test_validate_warns_at_each_trust_remote_code_line_and_still_exits_0(tiny_manifest, tiny_models, capsys):
    manifest = tiny_manifest(
        "remote",
        model={"path": str(tiny_models["llama"]), "trust_remote_code": True},
        decoding={"kind": "speculative", "max_new_tokens": 6, "draft": {"path": str(tiny_models["llama"]), "trust_remote_code": True}},
    )
    plain = tiny_manifest("plain")
    assert main(["validate", str(manifest), str(plain)]) == 0
    out, err = capsys.readouterr()
    lines = manifest.read_text().splitlines()
    model_line = next(i for i, line in enumerate(lines, 1) if "trust_remote_code" in line)
    draft_line = max(i for i, line in enumerate(lines, 1) if "trust_remote_code" in line)
    assert f"{manifest}:{model_line}: warning: model.trust_remote_code: true runs Python code shipped with {tiny_models['llama']}; only for repositories you trust" in err
    assert f"{manifest}:{draft_line}: warning: decoding.draft.trust_remote_code: true runs Python code" in err
    assert err.count("warning:") == 2 and "2 manifest(s) valid" in out


def test_k8s_warns_about_trust_remote_code_on_stderr_and_renders(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    _model_manifest(folder, "remote", {"hub": "org/custom-model", "trust_remote_code": True})
    _model_manifest(folder, "plain", {"hub": "org/plain-model"})
    monkeypatch.chdir(tmp_path)
    assert main(["k8s", "set", "--image", "qabench:1", "--storage", "s3://bucket/runs"]) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "set/remote.yaml:4: warning: model.trust_remote_code: true runs Python code shipped with org/custom-model; only for repositories you trust"
    ]
    assert "kind: Job" in out


def test_k8s_storage_with_credentials_is_refused_without_echoing_them(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    _model_manifest(folder, "plain", {"hub": "org/plain-model"})
    monkeypatch.chdir(tmp_path)
    assert main(["k8s", "set", "--image", "qabench:1", "--storage", f"s3://{KEY_ID}:{SECRET}@bucket/runs"]) == 2
    out, err = capsys.readouterr()
    assert "credentials do not belong in a storage URI" in err and SECRET not in out + err and KEY_ID not in out + err


def test_credentials_in_the_endpoint_of_a_real_server_never_reach_a_message(seaweed, places, monkeypatch, capsys):
    """A live SeaweedFS refusing a wrong secret: the access-denied line names the endpoint, redacted."""
    endpoint = seaweed.endpoint.replace("http://", f"http://{KEY_ID}:{SECRET}@")
    sw.use(monkeypatch, seaweed.env(places / "work", AWS_ENDPOINT_URL=endpoint, AWS_SECRET_ACCESS_KEY=f"wrong-{SECRET}"))
    assert main(["pull", f"s3://{sw.BUCKET}/runs", str(places / "dest")]) == 2
    out, err = capsys.readouterr()
    assert "access denied" in err and f"at {endpoint.replace(f'{KEY_ID}:{SECRET}', '***')}" in err
    assert SECRET not in out + err and KEY_ID not in out + err
