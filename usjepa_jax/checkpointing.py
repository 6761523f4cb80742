"""One checkpoint = train state + the data iterator's position + run metadata (orbax ``CheckpointManager``).

Items of a checkpoint step:
- ``state``: the train state (params, optimizer state, step, EMA params), restored into abstract targets that
  carry the *current* shardings, so a run written on 8 devices resumes on 1;
- ``data``: the grain iterator state of every process (one JSON file per process), captured when ``save`` is
  called (not later by a background thread), so the resumed run sees exactly the batches it would have seen;
- ``meta``: JSON with the teacher's path and content hash and the config; resuming against a different teacher
  is refused.

The frozen teacher is never written here: it is recorded by path and hash. ``PreemptionWatcher`` tells the
trainer when SIGTERM asks for a last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from usjepa_jax import storage


@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: dict[str, Any]


@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


class DataStateHandler(ocp.CheckpointHandler):
    """Saves a snapshot (a JSON-able dict) of this process's data-iterator state, one file per process.

    Kept instead of ``grain.checkpoint.CheckpointHandler`` (same file layout): grain's handler is given the live
    iterator and calls ``get_state()`` when orbax runs the handler, while ours is given the state captured at the
    ``save`` call, so the position saved is the step's whatever the save's timing; restoring returns the state
    (grain's sets it on an iterator it must be given) and names the process-count mismatch.
    """

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        path = storage.path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        path.write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> dict[str, Any]:
        path = storage.path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not path.exists():
            found = sorted(p.name for p in storage.path(directory).glob("process_*.json"))
            raise FileNotFoundError(
                f"No data-iterator state for process {jax.process_index()} of {jax.process_count()} in "
                f"{directory} (found {found}). The data position can only be resumed with the same number of "
                "processes; model state alone restores on any device count.")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def structure(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


ocp.args.register_with_handler(DataStateHandler, for_save=True)(DataStateSave)
ocp.args.register_with_handler(DataStateHandler, for_restore=True)(DataStateRestore)


def make_manager(directory: str | Path, *, max_to_keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """Checkpoints under ``directory``: the last ``max_to_keep``, plus every multiple of ``keep_period``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(storage.absolute(directory), item_names=("state", "data", "meta"),
                                 options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict[str, Any] | None,
         meta: dict[str, Any], *, force: bool = False) -> bool:
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data_state is not None:
        items["data"] = DataStateSave(data_state)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, *, with_data: bool = True
            ) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    """Restore ``(state, data_state, meta)`` at ``step``; ``abstract_state`` carries the target shardings."""
    items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    if with_data:
        items["data"] = DataStateRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored.get("data") if with_data else None, restored["meta"]


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


class Preempted(Exception):
    """Raised after the checkpoint of a SIGTERM'd run is written; rerunning the same command resumes it."""


class PreemptionWatcher:
    """Notices SIGTERM (what Cloud TPU and SLURM send before preemption) and makes all processes agree on the
    step at which to stop.

    One process: our own SIGTERM handler sets a flag. Several: JAX's coordination service already listens for
    SIGTERM on every process, and ``reached_preemption_sync_point`` returns True on all of them at the same step.
    """

    def __init__(self) -> None:
        self._flag = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting.")
        self._flag = True

    def reached(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._flag
        return multihost_utils.reached_preemption_sync_point(step)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
