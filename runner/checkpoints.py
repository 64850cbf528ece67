"""Trainer checkpoints and the training log in storage: published as they are written, fetched on a fresh host.

The trainer writes into `store.local_dir(keys.checkpoints)`. With the local store that folder is
the store itself and publishing costs nothing; with S3 it is the local working folder, and
publishing each complete checkpoint is what lets a preempted host's successor resume instead of
starting over.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.console import log
from runner.paths import TrainingKeys
from runner.storage import CorruptObject, LocalStore, Store

CHECKPOINT_PREFIX = "checkpoint-"


def _stored_folders(store: Store, keys: TrainingKeys) -> dict[int, str]:
    """Step → key of every checkpoint folder in storage, complete or not."""
    folders = {}
    for key in store.list(keys.checkpoints):
        name = key[len(keys.checkpoints) + 1 :].split("/", 1)[0]
        if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
            folders[int(name[len(CHECKPOINT_PREFIX) :])] = f"{keys.checkpoints}/{name}"
    return folders


def newest_stored_checkpoint(store: Store, keys: TrainingKeys) -> int | None:
    """The step of the newest complete checkpoint in storage (where a training would resume), or None."""
    for step, key in sorted(_stored_folders(store, keys).items(), reverse=True):
        if store.dir_complete(key):
            return step
    return None


def restore_training(store: Store, keys: TrainingKeys, checkpoint_dir: Path, log_path: Path) -> None:
    """On a host with no complete checkpoint, fetch the newest complete one (and the log so far) from storage."""
    from runner.train import complete_checkpoints, reached_last_step

    if not log_path.exists() and store.exists(keys.train_log):
        log_path.write_bytes(store.read_bytes(keys.train_log))
    skip_damaged_checkpoints(store, keys)
    if complete_checkpoints(checkpoint_dir):
        return
    for step, key in sorted(_stored_folders(store, keys).items(), reverse=True):
        if store.dir_complete(key):
            log(f"fetching checkpoint-{step} from storage")
            try:
                store.sync_down(key)  # every file checked against its checksum and the folder's listing
            except CorruptObject as exc:
                _quarantine_checkpoint(store, keys, key, str(exc))
                continue
            if not reached_last_step(checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"):
                return  # else fetch the one before too: training resumes before its last step (runner/train.py)


def skip_damaged_checkpoints(store: Store, keys: TrainingKeys) -> None:
    """Quarantine complete stored checkpoints that fail their published listing, newest first, until
    one passes: the trainer then resumes from the newest checkpoint that is whole.

    A local store's folder is what the trainer reads, so its files are rehashed; a remote store's
    listing and recorded checksums are compared here and the bytes when sync_down fetches them.
    """
    from runner.verify_storage import check_checkpoint

    deep = isinstance(store, LocalStore)
    for _, key in sorted(_stored_folders(store, keys).items(), reverse=True):
        if not store.dir_complete(key):
            continue
        problem = check_checkpoint(store, key, deep=deep)
        if problem is None:
            return
        _quarantine_checkpoint(store, keys, key, problem)


def _quarantine_checkpoint(store: Store, keys: TrainingKeys, key: str, problem: str) -> None:
    from runner.verify_storage import Check, Finding, repair

    done = repair(store, Check(keys.prefix, (Finding(key, problem, folder=True),)))
    log(f"repaired training {keys.digest}: {key.rsplit('/', 1)[-1]} is damaged ({problem}) — {done}; resuming from an older checkpoint")


def publish_log(store: Store, keys: TrainingKeys, log_path: Path) -> None:
    """Upload train_log.jsonl as it stands (a no-op rewrite of the same file for the local store)."""
    if log_path.is_file():
        store.write_bytes(keys.train_log, log_path.read_bytes())


def restore_tensorboard(store: Store, keys: TrainingKeys) -> Path:
    """The local event-file folder, holding what earlier attempts published (put_dir replaces the folder)."""
    if store.dir_complete(keys.tensorboard):
        return store.sync_down(keys.tensorboard)
    return store.local_dir(keys.tensorboard)


def publish_tensorboard(store: Store, keys: TrainingKeys, folder: Path | None) -> None:
    """Upload the event files as they stand (nothing for the local store, whose folder is storage)."""
    if folder is not None and any(p.is_file() for p in folder.rglob("*")):
        store.put_dir(keys.tensorboard, folder)


def tensorboard_callback(folder: Path):
    """transformers' TensorBoard callback writing into `folder` (tensorboardX's writer: no TensorFlow).

    An attempt that resumes logs again the steps after its checkpoint that a cut-off attempt had
    already logged. Its writer is made at its first event and marks the step it starts from
    (`purge_step`): TensorBoard then drops the earlier attempts' events from that step on, so each
    step shows once, with the values train_log.jsonl holds.
    """
    from tensorboardX import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    class ResumableTensorBoard(TensorBoardCallback):
        writers = 0

        def _writer_for(self, state) -> None:
            # The trainer closes the writer when training ends; the held-out evaluation after it
            # gets a new one, in the same folder.
            if self.tb_writer is None and state.is_world_process_zero:
                # A fresh start (step 0) redoes everything an attempt cut off before its first checkpoint logged.
                start = state.global_step + 1 if state.global_step else 0
                # Event files are named by the second they were opened in: a second writer within
                # that second would truncate the first's file without a suffix of its own.
                self.writers += 1
                self.tb_writer = SummaryWriter(logdir=str(folder), purge_step=start, filename_suffix=f".{os.getpid()}.{self.writers}")

        def on_train_begin(self, args, state, control, **kwargs):
            self._writer_for(state)
            super().on_train_begin(args, state, control, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self._writer_for(state)
            super().on_log(args, state, control, logs=logs, **kwargs)

    return ResumableTensorBoard()


def checkpoint_publisher(store: Store, keys: TrainingKeys, checkpoint_dir: Path, log_path: Path, tensorboard: Path | None = None):
    """A TrainerCallback that publishes each complete checkpoint; list it after every callback that writes into checkpoints."""
    from transformers import TrainerCallback

    from runner.train import CHECKPOINT_COMPLETE

    class PublishCheckpoints(TrainerCallback):
        """After a save: upload the new checkpoint, drop stored ones the trainer rotated out locally."""

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            # The log first: it then holds exactly the steps up to this checkpoint, so a host
            # that resumes from it neither misses nor repeats a record.
            publish_log(store, keys, log_path)
            publish_tensorboard(store, keys, tensorboard)
            folder = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if (folder / CHECKPOINT_COMPLETE).is_file():
                store.put_dir(f"{keys.checkpoints}/{folder.name}", folder)
            kept = {p.name for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")}
            for key in _stored_folders(store, keys).values():
                if key.rsplit("/", 1)[-1] not in kept:
                    store.remove_dir(key)

    return PublishCheckpoints()
