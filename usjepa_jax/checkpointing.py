"""One checkpoint = train state + the data iterator's position + run metadata (orbax ``CheckpointManager``).

Items of a checkpoint step:
- ``state``: the train state (params, optimizer state, step, the target source's state), restored into abstract
  targets that carry the *current* shardings, so a run written on 8 devices resumes on 1 (``check_state_fits``
  first: a state of another config is refused naming the parameters);
- ``data``: the grain iterator state of every process (one JSON file per process), captured when ``save`` is
  called (not later by a background thread), so the resumed run sees exactly the batches it would have seen;
- ``meta``: JSON with the teacher's path and content hash and the config; resuming against a different teacher
  is refused.

``restore_latest`` resumes from the newest step that restores: a damaged step (a truncated or missing file, a
save cut short) is moved aside to ``checkpoints/STEP.damaged`` (never deleted: it may still be worth a look) with
a one-line warning, and the next newest is tried; a refusal (``errors.ResumeRefused``: another config or
teacher) is not damage and stops the run.

The frozen teacher is never written here: it is recorded by path and hash. ``PreemptionWatcher`` tells the
trainer when SIGTERM asks for a last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from usjepa_jax import storage
from usjepa_jax.errors import ResumeRefused, UserError


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
            raise ResumeRefused(
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
    """Restore ``(state, data_state, meta)`` at ``step``; ``abstract_state`` carries the target shardings.

    The saved state is first compared with ``abstract_state`` (``check_state_fits``), so a run folder written by
    another config or an older layout of the train state fails naming the parameters, not with orbax's tree diff.
    """
    check_state_fits(epath.Path(manager.directory) / str(step) / "state", abstract_state)
    items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    if with_data:
        items["data"] = DataStateRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored.get("data") if with_data else None, restored["meta"]


def _leaf_name(path: tuple[Any, ...]) -> str:
    """``opt_state/0/mu/encoder/...``: one spelling for a train state's paths and the saved tree's dict keys."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_state_fits(state_dir: epath.Path, abstract_state: Any, *, show: int = 5) -> None:
    """Raise ``ValueError`` naming the parameters that differ between a saved train state and the one to restore.

    Reads only the checkpoint's metadata (names, shapes, dtypes). The usual causes: the workdir was trained with
    another model or method config, or by a usjepa_jax from before the target sources had one interface (#13:
    the train state's ``ema_params`` became ``targets``), whose checkpoints do not resume.
    """
    metadata = ocp.StandardCheckpointHandler().metadata(state_dir)
    saved_tree = getattr(metadata, "item_metadata", metadata)
    saved_tree = getattr(saved_tree, "tree", saved_tree)
    mismatch = tree_mismatch(saved_tree, abstract_state, show=show)
    if mismatch:
        raise ResumeRefused(
            f"The checkpoint {state_dir} does not fit this run's train state (another model or method config, or a "
            f"run folder from an older usjepa_jax layout); use a new workdir, or the config it was trained with."
            + "".join(f"\n  {line}" for line in mismatch))


def tree_mismatch(saved_tree: Any, wanted_tree: Any, *, show: int = 5, saved: str = "saved",
                  wanted: str = "this run", dtypes: bool = True) -> list[str]:
    """How two parameter trees differ, one line per kind (empty when they fit): the leaves only in one of them
    and those of another shape (or dtype, with ``dtypes``), ``show`` of each; ``saved``/``wanted`` name the trees.
    Leaves need a ``shape`` (arrays, ``ShapeDtypeStruct``, orbax metadata); None counts as an empty leaf."""
    def specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
        return {_leaf_name(p): ((tuple(x.shape), str(x.dtype) if dtypes else "") if hasattr(x, "shape")
                                else ((), "None"))
                for p, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]}

    have, want = specs(saved_tree), specs(wanted_tree)

    def params_first(names) -> list[str]:  # the optimizer's copies of a parameter after the parameter
        return sorted(names, key=lambda n: (n.startswith("opt_state"), n))

    def shape(leaf: tuple[tuple[int, ...], str]) -> str:
        return "(empty)" if leaf[1] == "None" else str(leaf[0])

    def listing(title: str, names: list[str], describe) -> list[str]:
        more = f" ... and {len(names) - show} more" if len(names) > show else ""
        return [f"{title} ({len(names)}): " + "; ".join(describe(n) for n in names[:show]) + more] if names else []

    return (listing(f"{saved} but not in {wanted}", params_first(have.keys() - want.keys()),
                    lambda n: f"{n} {shape(have[n])}")
            + listing(f"in {wanted} but not {saved}", params_first(want.keys() - have.keys()),
                      lambda n: f"{n} {shape(want[n])}")
            + listing("different shape or dtype" if dtypes else "different shape",
                      params_first(k for k in want.keys() & have.keys() if want[k] != have[k]),
                      lambda n: f"{n}: {saved} {_spec(have[n])}, {wanted} {_spec(want[n])}"))


def _spec(leaf: tuple[tuple[int, ...], str]) -> str:
    return f"{leaf[0]} {leaf[1]}".strip()


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   check_meta: Callable[[dict[str, Any]], None] | None = None
                   ) -> tuple[Any, dict[str, Any] | None, int] | None:
    """``(state, data_state, step)`` of the newest step that restores, or None when there is no checkpoint.

    ``check_meta(meta)`` may refuse a step by raising ``ResumeRefused`` (which propagates: a refusal is not
    damage). Any other failure counts as damage: when an older step restores, the damaged newer ones are moved
    aside (``STEP.damaged``) with a one-line warning each, so the resumed run writes those steps again. When no
    step restores nothing is moved and ``UserError`` names the steps and the first failure.
    """
    damaged: list[tuple[int, Exception]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            meta = restore_meta(manager, step)
            if check_meta is not None:
                check_meta(meta)
            state, data_state, _ = restore(manager, step, abstract_state)
        except ResumeRefused:
            raise
        except Exception as e:  # noqa: BLE001 - orbax and tensorstore fail in many ways on a damaged step
            damaged.append((step, e))
            continue
        for bad, error in damaged:
            aside = _move_aside(epath.Path(manager.directory) / str(bad))
            logging.warning("Checkpoint step %d does not restore (%s); moved aside to %s, resuming from step %d.",
                            bad, _reason(error), aside, step)
        if damaged:
            multihost_utils.sync_global_devices("checkpoints moved aside")  # process 0 moved them
            manager.reload()
        return state, data_state, step
    if damaged:
        raise UserError(f"No checkpoint in {manager.directory} restores (steps {[s for s, _ in damaged]}; step "
                        f"{damaged[0][0]}: {_reason(damaged[0][1])}). Nothing was moved; move the damaged steps "
                        "away by hand to train from scratch in this workdir, or use a new one.")
    return None


def _reason(error: Exception, limit: int = 200) -> str:
    """The first line of an error, shortened: orbax's and tensorstore's messages run to many lines."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:limit]}{'...' if len(first) > limit else ''}"


def _move_aside(step_dir: epath.Path) -> epath.Path:
    """``STEP`` -> ``STEP.damaged`` (``STEP.damaged.N`` when taken); orbax does not list such a name as a step."""
    aside, n = step_dir.parent / f"{step_dir.name}.damaged", 1
    while aside.exists():
        aside, n = step_dir.parent / f"{step_dir.name}.damaged.{n}", n + 1
    if jax.process_index() == 0:
        step_dir.rename(aside)
    return aside


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
