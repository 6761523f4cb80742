"""Speed of the token readouts (evaluation/attentive.py, dense.py) on frozen patch tokens, one JSON line per probe.

    python benchmarks/token_probe_speed.py [--num 10000] [--tokens 64] [--dim 192] [--seeds 5]

Tokens are Gaussian noise with the label written at one random position (attentive: class centres, as in the
attentive probe's test) or per patch (dense: each patch's class centre, patch-constant maps). The protocols are the
config defaults (``config.evals.attentive`` / ``dense``): early stopping decides the epochs. Reported: compile +
first run, a second (compiled) run, its CPU seconds, the epochs run per seed and the test metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from usjepa_jax.evaluation.attentive import AttentiveHead, train_attentive_probe
from usjepa_jax.evaluation.config import default_eval_config
from usjepa_jax.evaluation.dense import train_dense_probe
from usjepa_jax.evaluation.probe import ProbeConfig

CLASSES, SEPARATION = 5, 2.0  # class-centre scale against noise of std 1


def timed(fn):
    """(result, wall seconds, CPU seconds of this process, all threads)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=10_000, help="probe-train examples (val and test: a quarter each)")
    p.add_argument("--tokens", type=int, default=64, help="patch tokens per example (a square grid)")
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--seeds", type=int, default=5)
    a = p.parse_args()
    a.classes = CLASSES
    rng = np.random.default_rng(0)
    n = a.num + 2 * (a.num // 4)
    centres = rng.standard_normal((a.classes, a.dim)).astype(np.float32) * SEPARATION
    evals = default_eval_config()

    def split(x, y):
        return (x[:a.num], y[:a.num]), (x[a.num:a.num + a.num // 4], y[a.num:a.num + a.num // 4]), \
            (x[a.num + a.num // 4:], y[a.num + a.num // 4:])

    x = rng.standard_normal((n, a.tokens, a.dim)).astype(np.float32)
    y = rng.integers(0, a.classes, n)
    x[np.arange(n), rng.integers(0, a.tokens, n)] += centres[y]  # the label at one random position
    (xt, yt), (xv, yv), (xe, ye) = split(x, y)
    cfg = ProbeConfig.from_config(evals.attentive)
    cfg = ProbeConfig(**{**cfg.__dict__, "num_seeds": a.seeds})
    head = AttentiveHead(int(evals.attentive.num_heads), float(evals.attentive.mlp_ratio))
    run = lambda: train_attentive_probe(xt, yt, xv, yv, a.classes, cfg, head)  # noqa: E731
    _, first, _ = timed(run)
    probe, wall, cpu = timed(run)
    print(json.dumps({"probe": "attentive", "num": a.num, "tokens": a.tokens, "dim": a.dim, "seeds": a.seeds,
                      "first_s": round(first, 1), "compiled_s": round(wall, 1), "compiled_cpu_s": round(cpu, 1),
                      "epochs": probe.epochs.tolist(),
                      "macro_f1": round(probe.evaluate(xe, ye)["macro_f1_mean"], 3)}), flush=True)

    g = int(round(np.sqrt(a.tokens)))
    patch = 8
    codes = rng.integers(0, a.classes, (n, g, g))
    x = rng.standard_normal((n, a.tokens, a.dim)).astype(np.float32) + centres[codes.reshape(n, -1)]
    seg = np.repeat(np.repeat(codes, patch, 1), patch, 2).astype(np.uint8)
    (xt, st), (xv, sv), (xe, se) = split(x, seg)
    cfg = ProbeConfig.from_config(evals.dense)
    cfg = ProbeConfig(**{**cfg.__dict__, "num_seeds": a.seeds})
    run = lambda: train_dense_probe(xt, st, xv, sv, a.classes, patch, cfg)  # noqa: E731
    _, first, _ = timed(run)
    probe, wall, cpu = timed(run)
    print(json.dumps({"probe": "dense", "num": a.num, "tokens": a.tokens, "dim": a.dim, "seeds": a.seeds,
                      "first_s": round(first, 1), "compiled_s": round(wall, 1), "compiled_cpu_s": round(cpu, 1),
                      "epochs": probe.probe.epochs.tolist(),
                      "miou": round(probe.evaluate(xe, se)["miou_mean"], 3)}), flush=True)


if __name__ == "__main__":
    main()
