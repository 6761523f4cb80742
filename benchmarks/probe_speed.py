"""Linear-probe speed on frozen features, the paper's protocol (evaluation/probe.py), one JSON line per case.

    python benchmarks/probe_speed.py [--num 10000] [--dim 768] [--classes 5] [--seeds 5] [--max-epochs 150]

Features are Gaussian class clusters (learnable, so early stopping behaves as on real features). Reported:
compile + first run, a second (compiled) run, the epochs run per seed, and the probe's test macro-F1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from usjepa_jax.evaluation.probe import ProbeConfig, train_probe


def clusters(n: int, centres: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    classes, dim = centres.shape
    y = rng.integers(0, classes, n).astype(np.int32)
    return (centres[y] + rng.normal(size=(n, dim)).astype(np.float32)), y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=10_000, help="probe-train examples")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=150)
    p.add_argument("--patience", type=int, default=15)
    p.add_argument("--separation", type=float, default=0.03, help="class-centre scale (noise std 1)")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(a.classes, a.dim)).astype(np.float32) * a.separation
    x_tr, y_tr = clusters(a.num, centres, rng)
    x_va, y_va = clusters(a.num // 5, centres, rng)
    x_te, y_te = clusters(a.num // 5, centres, rng)
    cfg = ProbeConfig(num_seeds=a.seeds, max_epochs=a.max_epochs, patience=a.patience)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        probe = train_probe(x_tr, y_tr, x_va, y_va, a.classes, cfg)
        times.append(time.perf_counter() - t)
    m = probe.evaluate(x_te, y_te)
    print(json.dumps({"case": "linear_probe", "num": a.num, "dim": a.dim, "classes": a.classes, "seeds": a.seeds,
                      "first_run_s": round(times[0], 2), "compiled_run_s": round(times[1], 2),
                      "epochs_per_seed": probe.epochs.tolist(), "macro_f1_mean": round(m["macro_f1_mean"], 4)}))


if __name__ == "__main__":
    main()
