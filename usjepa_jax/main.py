"""Command-line entry: ``python -m usjepa_jax.main --config=configs/base.py --workdir=DIR``.

Kept tiny so that the logic lives in ``train.py``, which tests and notebooks import. Config overrides work as
``--config.optim.lr_peak=1e-4``; a typo in a key fails here, before any compute. How it ends (``cli.py``): 0 done,
2 a user error (one line naming the key, file or value; ``--verbose`` for the traceback), 3 diverged (nothing
non-finite saved), 75 preempted (a checkpoint saved; the same command resumes; the launch scripts requeue).
"""

import logging as logging_std
import os

from absl import app, flags, logging
from ml_collections import config_flags

from usjepa_jax import cli, storage
from usjepa_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exported encoders.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs started by hand.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator_address).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", None, "Force (True) or forbid (False) jax.distributed "
                                 "initialisation; by default it happens when a multi-process launcher is detected.")
_PROFILE = flags.DEFINE_integer("profile", 0, "Write a jax.profiler trace of the first N steps to <workdir>/profile "
                                "(the same as --config.profile_steps=N).")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_process_launcher() -> bool:
    """Cloud TPU pod slices, SLURM and MPI set these; jax.distributed.initialize() then finds its peers itself."""
    env = os.environ
    return (len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1 or int(env.get("SLURM_NTASKS", "1")) > 1
            or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def initialize_distributed() -> None:
    """``jax.distributed.initialize`` when this is one of several processes (must precede any other jax use)."""
    import jax  # here: flag and config errors come before jax loads

    if _COORDINATOR.value:
        if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value or (_DISTRIBUTED.value is None and _multi_process_launcher()):
        jax.distributed.initialize()
    else:
        return
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


class _QuietLibraries(logging_std.Filter):
    """Drop the INFO chatter of orbax and grain (one line per checkpoint file) so progress lines stay readable."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return record.levelno >= logging_std.WARNING or not any(
            f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    if _PROFILE.value:
        config.profile_steps = _PROFILE.value
    config_lib.validate(config)  # before jax touches a device
    storage.check_workdir(_WORKDIR.value)
    # a gs:// path without its backend fails here, naming what to install, before anything is written
    storage.check_backends([_WORKDIR.value, config.teacher.checkpoint])
    storage.require_local(config.teacher.cache, "config.teacher.cache")
    for path in config.data.paths:
        storage.require_local(path, "config.data.paths")
    initialize_distributed()
    import jax

    from usjepa_jax import sharding, train  # deferred (as jax): flag and config errors come first and fast

    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)  # one process logs progress
    found, warning = sharding.backend_report(config.expect_accelerator)
    logging.info("%s", found)
    if warning:
        logging.warning("%s", warning)
    logging.info("Config:\n%s", config)
    train.train_and_evaluate(config, _WORKDIR.value)  # Preempted: exit 75, the checkpoint written (cli.py)


if __name__ == "__main__":
    cli.run(main)
