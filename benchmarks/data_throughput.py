"""Simulator and input-pipeline throughput, one JSON line per case.

    python benchmarks/data_throughput.py [--sizes 224,96,64] [--seconds 5] [--pipeline]

`simulator`: images/s of `render` in this process on one core (BLAS/FFT threads pinned to 1) at each output size,
wall clock and CPU time per image side by side: on a shared machine the CPU time (`cpu_ms_per_image`,
`images_per_cpu_s`) is what the rate is on an idle core. Targets: >= 100 images/s per core at 224x224 and >= 300
at 64-96. The acquisition grid (mean size `grid_samples`) depends on the probe and pulse, not on the output
size, so the cost falls only a little with the output size. `pipeline` (with `--pipeline`): batches/s of the grain
pipeline the trainer consumes (with masks), in-process and with worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from usjepa_jax.data import pipeline, settings, synthetic  # noqa: E402
from usjepa_jax.masks import MultiBlockMaskSampler  # noqa: E402


def simulator_rate(size: int, seconds: float) -> dict:
    config = synthetic.SimulatorConfig(image_size=size)
    for seed in range(40):  # warm the per-(probe variant, size) pixel maps
        synthetic.render(10**6 + seed, 0, config)
    n, samples, start, cpu_start = 0, 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        grid = synthetic.render(n, n, config)["params"]["grid"]
        samples += grid[0] * grid[1]
        n += 1
    rate = n / (time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu_start) * 1e3 / n
    # Wall-clock rate, and the CPU time per image (what the rate would be on an idle core: the host is shared).
    return dict(case="simulator", image_size=size, images_per_s_per_core=round(rate, 1),
                ms_per_image=round(1e3 / rate, 2), cpu_ms_per_image=round(cpu_ms, 2),
                images_per_cpu_s=round(1e3 / cpu_ms, 1), grid_samples=round(samples / n), images=n)


def pipeline_rate(size: int, workers: int, batch: int, seconds: float) -> dict:
    config = settings.default_data_config()
    config.image_size = size
    config.synthetic.image_size = size
    config.worker_count = workers
    sampler = MultiBlockMaskSampler(grid_size=(size // 16, size // 16))
    it = iter(pipeline.build_dataset(config, global_batch_size=batch, seed=0, mask_sampler=sampler))
    next(it)  # start-up (and worker spawn) excluded
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        n += 1
    rate = n / (time.perf_counter() - start)
    return dict(case="pipeline", image_size=size, workers=workers, batch=batch, batches_per_s=round(rate, 2),
                images_per_s=round(rate * batch, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="224,96,64", help="output sizes of the simulator cases")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pipeline", action="store_true", help="also measure the grain pipeline")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        print(json.dumps(simulator_rate(size, args.seconds)), flush=True)
    if args.pipeline:
        flags.FLAGS.mark_as_parsed()  # grain's multiprocess prefetch reads absl flags
        for workers in (0, 2):
            print(json.dumps(pipeline_rate(sizes[0], workers, args.batch, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
