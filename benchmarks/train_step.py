"""Train-step throughput and MFU, one JSON line per case.

    python benchmarks/train_step.py                      # ViT-S/16 @224 batch 16, and the base config
    python benchmarks/train_step.py --cases=base --steps=10
    python benchmarks/train_step.py --compare-cache      # each case with the teacher forward and with cached
                                                         # targets (encoders/cache.py), and the speed-up ratio

MFU = (XLA's FLOP count of one compiled step / measured step time) / matmul peak, where the peak is measured in
the same process with a large float32 matmul on the same devices: a ratio of two measurements on one machine,
comparable across machines. The step runs on synthetic batches already on device (the input pipeline is measured
separately by benchmarks/data_throughput.py) and with a random-init frozen teacher of the configured size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import base  # noqa: E402
from usjepa_jax import config as config_lib  # noqa: E402
from usjepa_jax import train  # noqa: E402
from usjepa_jax.encoders import FrozenEncoder  # noqa: E402
from usjepa_jax.encoders.cache import TeacherCache  # noqa: E402


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """Achieved FLOP/s of a ``size``-square float32 matmul chain (the machine's practical peak)."""
    x = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def vit_s16_config():
    c = base.get_config()
    c.data.image_size = 224
    c.masks.min_keep = 10
    c.model = config_lib.model_config("S/16")
    c.teacher.model = config_lib.model_config("S/16")
    c.predictor = config_lib.predictor_config(width=192, depth=6, num_heads=6)
    c.optim.batch_size = 16
    return c


CASES = {"vit_s16_224": vit_s16_config, "base": base.get_config}


def random_teacher(config) -> FrozenEncoder:
    module = train.build_encoder(config.teacher.model)
    s = config.data.image_size
    params = jax.jit(module.init)(jax.random.key(1), jnp.zeros((1, s, s, 1)))["params"]
    return FrozenEncoder(module, params, 1, config.data.mean, config.data.std, "<random>", "random")


def cached_teacher(config) -> TeacherCache:
    """Stands in for a teacher cache of the configured teacher's size: the batches carry its targets."""
    module = train.build_encoder(config.teacher.model)
    grid = config.data.image_size // module.patch_size
    return TeacherCache("<benchmark>", "<random>", "random", module.width, grid * grid, module.patch_size, False)


def masked_batch(trainer: train.Trainer, rng: np.random.Generator) -> dict[str, np.ndarray]:
    config = trainer.config
    n, s = config.optim.batch_size, config.data.image_size
    samples = [trainer.sampler(rng) for _ in range(n)]
    batch = {k: np.stack([m[k] for m in samples]) for k in samples[0]}
    batch["image"] = rng.integers(0, 256, (n, s, s, 1), dtype=np.uint8)
    if trainer.teacher_cache is not None:  # what the pipeline attaches from the cache: bf16 [B, N, D]
        cache = trainer.teacher_cache
        batch[train.CACHED_TARGETS_KEY] = rng.standard_normal((n, cache.tokens, cache.width), np.float32).astype(
            jnp.bfloat16)
    return batch


def run_case(name: str, steps: int, peak: float, cached: bool = False) -> dict:
    config = CASES[name]()
    config_lib.validate(config)
    teacher = None
    if config.method == "usjepa":
        teacher = cached_teacher(config) if cached else random_teacher(config)
    trainer = train.build_trainer(config, teacher)
    rng = np.random.default_rng(0)
    batches = [trainer.place_batch(masked_batch(trainer, rng)) for _ in range(4)]
    state = trainer.init(jax.random.key(0))
    compiled = trainer.step.lower(state, trainer.teacher_params, batches[0]).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"])
    state, metrics = compiled(state, trainer.teacher_params, batches[0])  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, trainer.teacher_params, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    step_time = (time.perf_counter() - start) / steps
    return dict(case=name, cached_targets=cached, variant=config.model.variant, teacher=config.teacher.model.variant,
                image_size=config.data.image_size, batch=config.optim.batch_size, devices=jax.device_count(),
                backend=jax.default_backend(), step_time_ms=round(step_time * 1e3, 2),
                images_per_s=round(config.optim.batch_size / step_time, 1), gflops_per_step=round(flops / 1e9, 2),
                achieved_gflops=round(flops / step_time / 1e9, 1), peak_matmul_gflops=round(peak / 1e9, 1),
                mfu=round(flops / step_time / peak, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compare-cache", action="store_true",
                        help="run each case with the teacher forward and with cached targets; print the ratio")
    args = parser.parse_args()
    peak = matmul_peak_flops()
    for name in args.cases.split(","):
        with_teacher = run_case(name, args.steps, peak)
        print(json.dumps(with_teacher), flush=True)
        if args.compare_cache:
            cached = run_case(name, args.steps, peak, cached=True)
            print(json.dumps(cached), flush=True)
            print(json.dumps({"case": name, "cached_speedup": round(with_teacher["step_time_ms"]
                                                                    / cached["step_time_ms"], 2),
                              "gflops_ratio": round(with_teacher["gflops_per_step"]
                                                    / cached["gflops_per_step"], 2)}), flush=True)


if __name__ == "__main__":
    main()
