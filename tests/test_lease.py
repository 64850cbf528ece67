"""The training lease on a real local store: create-if-absent generations, expiry, takeover, loss."""

from __future__ import annotations

import json
import time

import pytest

from runner.errors import InfraError
from runner.lease import Holder, Lease, current_holder, try_acquire
from runner.paths import TrainingKeys
from runner.storage import LocalStore

KEYS = TrainingKeys("0123456789ab")


def _foreign(store: LocalStore, generation: int, expires_in: float) -> None:
    """A lease generation written by a process on another host."""
    record = {"holder": "other-host:4242:abcd", "generation": generation, "expires_at": time.time() + expires_in}
    assert store.write_new(KEYS.lease_generation(generation), json.dumps(record).encode())


def test_first_contender_gets_generation_one_and_the_next_sees_it_busy(tmp_path, monkeypatch):
    monkeypatch.setenv("QABENCH_LEASE_SECONDS", "60")
    store = LocalStore(tmp_path)
    lease = try_acquire(store, KEYS)
    assert isinstance(lease, Lease) and lease.generation == 1
    busy = try_acquire(store, KEYS)
    assert isinstance(busy, Holder) and busy.generation == 1 and not busy.expired
    lease.release()
    assert current_holder(store, KEYS).expired, "a released lease lets the next contender in at once"
    successor = try_acquire(store, KEYS)
    assert isinstance(successor, Lease) and successor.generation == 2
    successor.release()


def test_live_holder_on_another_host_blocks_until_its_lease_expires(tmp_path, monkeypatch):
    monkeypatch.setenv("QABENCH_LEASE_SECONDS", "60")
    store = LocalStore(tmp_path)
    _foreign(store, 1, expires_in=60)
    assert isinstance(try_acquire(store, KEYS), Holder)
    _foreign(store, 2, expires_in=-1)  # that holder renewed, then died: its newest generation expired
    lease = try_acquire(store, KEYS)
    assert isinstance(lease, Lease) and lease.generation == 3
    lease.release()


def test_holder_that_stalled_past_expiry_learns_it_lost_the_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("QABENCH_LEASE_SECONDS", "1.5")
    store = LocalStore(tmp_path)
    lease = try_acquire(store, KEYS)
    _foreign(store, 2, expires_in=60)  # a successor took over while this holder stalled
    deadline = time.monotonic() + 10
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(InfraError, match="lost the lease"):
        lease.check()
    lease.release()
    assert current_holder(store, KEYS).holder == "other-host:4242:abcd", "the loser does not touch its successor's lease"


def test_holder_renews_so_a_long_training_keeps_its_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("QABENCH_LEASE_SECONDS", "1.5")
    store = LocalStore(tmp_path)
    lease = try_acquire(store, KEYS)
    time.sleep(3.5)  # more than twice the expiry
    assert not current_holder(store, KEYS).expired and isinstance(try_acquire(store, KEYS), Holder)
    lease.release()


def test_unreadable_lease_object_never_blocks(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes(KEYS.lease_generation(1), b"{not json")
    lease = try_acquire(store, KEYS)
    assert isinstance(lease, Lease) and lease.generation == 2
    lease.release()
