"""Who may run a training now: a lease in storage, so no training runs twice at once.

Why a lease object and not ordering alone: pods of an Indexed Job, `just grid` shells on several
hosts and retried pods all reach the same storage and nothing else in common, and the store
already offers one atomic primitive on every backend — create-if-absent (`write_new`: S3
`If-None-Match: *`, local `link()`). The lease is a folder of numbered *generations*
(`trainings/<digest>/lease/00000001.json`, ...); the newest one decides:

- nobody holds it (no generation) → create generation 1;
- its holder's `expires_at` has passed (the holder died: SIGKILL, preempted node) → create the
  next generation; create-if-absent lets exactly one contender win it;
- otherwise → busy: wait, or do other work first.

The holder renews its own generation from a thread every third of the expiry and checks that no
newer generation exists; if one does, it has lost the lease (it stalled past the expiry) and its
training stops at the next step with a retryable error. Every artifact a training writes is a
whole object (checkpoints, the adapter folder, `_SUCCESS` last), so even two holders at once —
a stalled one and its successor — leave complete files, never mixed ones. Expiry compares the
writer's clock with the reader's: hosts must agree to well within the expiry (NTP does).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import uuid
from dataclasses import dataclass

from runner.console import log
from runner.errors import InfraError, StorageError
from runner.paths import TrainingKeys
from runner.storage import Store

DEFAULT_EXPIRY_SECONDS = 180.0
"""A holder that has not renewed for this long is presumed dead (QABENCH_LEASE_SECONDS overrides).
Renewal runs in its own thread every 60 s, independent of step length; a retried pod waits at
most this long for its dead predecessor's lease."""


def expiry_seconds() -> float:
    """The lease expiry: QABENCH_LEASE_SECONDS, else 3 minutes."""
    value = os.environ.get("QABENCH_LEASE_SECONDS")
    try:
        seconds = float(value) if value else DEFAULT_EXPIRY_SECONDS
    except ValueError:
        raise InfraError(f"QABENCH_LEASE_SECONDS={value!r} is not a number of seconds") from None
    if not 1 <= seconds <= 86400:
        raise InfraError(f"QABENCH_LEASE_SECONDS={value!r}: use 1 to 86400 seconds")
    return seconds


@dataclass(frozen=True)
class Holder:
    """The newest lease generation as stored."""

    generation: int
    holder: str
    expires_at: float

    @property
    def expired(self) -> bool:
        """Past its expiry, or held by a process of this host that no longer exists (a killed run's retry)."""
        return time.time() >= self.expires_at or _dead_here(self.holder)

    def describe(self) -> str:
        """`host:pid until HH:MM:SS` for messages."""
        return f"{self.holder.rsplit(':', 1)[0]} until {time.strftime('%H:%M:%S', time.localtime(self.expires_at))}"


def _dead_here(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.split(":", 1)[0]
    if host != platform.node() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _generations(store: Store, keys: TrainingKeys) -> list[int]:
    found = []
    for key in store.list(keys.lease):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".json") and name[: -len(".json")].isdigit():
            found.append(int(name[: -len(".json")]))
    return sorted(found)


def current_holder(store: Store, keys: TrainingKeys) -> Holder | None:
    """The newest generation, or None when the training was never leased."""
    generations = _generations(store, keys)
    if not generations:
        return None
    newest = generations[-1]
    try:
        record = json.loads(store.read_bytes(keys.lease_generation(newest)))
        return Holder(newest, str(record["holder"]), float(record["expires_at"]))
    except (ValueError, KeyError, TypeError):
        # Unreadable (cut off by hand, a foreign file): treat as expired so it cannot block forever.
        return Holder(newest, "unknown", 0.0)


class Lease:
    """A held lease: renewed in the background until released; `lost` once a successor took over."""

    def __init__(self, store: Store, keys: TrainingKeys, generation: int, holder: str, expiry: float):
        self.store, self.keys, self.generation, self.holder, self.expiry = store, keys, generation, holder, expiry
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_released, name="lease-renewal", daemon=True)

    @property
    def lost(self) -> bool:
        """Whether a newer generation exists: another process now trains this stage."""
        return self._lost.is_set()

    def check(self) -> None:
        """Raise a retryable error once the lease is lost (called between training steps)."""
        if self.lost:
            raise InfraError(f"lost the lease on training {self.keys.digest} to another process (this one stalled past the {self.expiry:.0f}s expiry); retry to reuse its work")

    def _record(self, expires_at: float) -> bytes:
        return json.dumps({"holder": self.holder, "generation": self.generation, "renewed_at": time.time(), "expires_at": expires_at}).encode()

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.expiry / 3):
            try:
                if _generations(self.store, self.keys)[-1:] != [self.generation]:
                    self._lost.set()
                    return
                self.store.write_bytes(self.keys.lease_generation(self.generation), self._record(time.time() + self.expiry))
            except (StorageError, InfraError) as exc:
                # Storage hiccups are retried at the next renewal; the expiry leaves two more tries.
                log(f"could not renew the lease on training {self.keys.digest}: {exc}")

    def start(self) -> Lease:
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and mark the generation expired, so a waiting process need not wait out the expiry."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if not self.lost:
            try:
                self.store.write_bytes(self.keys.lease_generation(self.generation), self._record(0.0))
            except (StorageError, InfraError) as exc:
                log(f"could not release the lease on training {self.keys.digest} (it expires by itself): {exc}")


def try_acquire(store: Store, keys: TrainingKeys) -> Lease | Holder:
    """The lease, held by this process from now on, or the live holder that has it."""
    expiry = expiry_seconds()
    me = f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    while True:
        holder = current_holder(store, keys)
        if holder is not None and not holder.expired:
            return holder
        generation = 1 if holder is None else holder.generation + 1
        record = json.dumps({"holder": me, "generation": generation, "renewed_at": time.time(), "expires_at": time.time() + expiry}).encode()
        if store.write_new(keys.lease_generation(generation), record):
            if holder is not None:
                log(f"training {keys.digest}: lease of {holder.holder.rsplit(':', 1)[0]} expired; taking over")
            return Lease(store, keys, generation, me, expiry).start()
        # Another contender created that generation first: look again at who holds it.
