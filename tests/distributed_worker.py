"""One process of a multi-process CPU run (started by tests/test_scale.py): 2 fake devices per process.

    python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR CONFIG_OVERRIDES_JSON
"""

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, num_processes, port, workdir, overrides = sys.argv[1:6]
jax.distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))

from configs import base  # noqa: E402
from usjepa_jax import train  # noqa: E402

config = base.get_config("smoke")
for key, value in json.loads(overrides).items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
train.train_and_evaluate(config, workdir)
jax.distributed.shutdown()
