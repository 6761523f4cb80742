"""Linear probe on frozen features, the paper's protocol, entirely on device.

AdamW (lr 1e-3, wd 1e-4), batch 32, cosine schedule over ``max_epochs`` x steps-per-epoch, up to 150 epochs,
early stopping on the validation cross-entropy with patience 15 (the parameters of the best validation epoch are
kept), several seeds. One ``jax.jit`` holds the whole run: a ``lax.while_loop`` over epochs (it stops when the
patience runs out) around a ``lax.scan`` over the minibatches of one epoch, ``vmap``-ed over the seeds (a seed
draws the initial weights and the shuffling). Features are z-scored with the train split's statistics.

Metrics: macro-F1 (the paper's headline; averaged over the classes present in the labels or the predictions, as
scikit-learn does), accuracy, balanced accuracy (mean per-class recall), each as mean and std over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 150
    patience: int = 15
    num_seeds: int = 5
    standardize: bool = True

    @classmethod
    def from_config(cls, cfg) -> ProbeConfig:
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    recall = tp[support > 0] / support[support > 0]
    return {"macro_f1": float(f1[present].mean()), "accuracy": float(tp.sum() / max(len(y_true), 1)),
                "balanced_accuracy": float(recall.mean())}


def standardizer(x_train: np.ndarray):
    mean = x_train.mean(0, keepdims=True)
    std = x_train.std(0, keepdims=True) + 1e-6
    return lambda x: ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)


def _loss(params, x, y, w=None):
    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    if w is None:
        return ce.mean()
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)


@functools.partial(jax.jit, static_argnames=("num_classes", "cfg"))
def _train(keys, x_tr, y_tr, x_va, y_va, *, num_classes: int, cfg: ProbeConfig):
    n, d = x_tr.shape
    batch = min(cfg.batch_size, n)
    steps = math.ceil(n / batch)
    schedule = optax.cosine_decay_schedule(cfg.lr, cfg.max_epochs * steps)
    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    grad_fn = jax.value_and_grad(_loss)

    def one_seed(key):
        init_key, key = jax.random.split(key)
        params = {"w": jax.random.normal(init_key, (d, num_classes)) * 0.01, "b": jnp.zeros((num_classes,))}
        nan = jnp.full((cfg.max_epochs,), jnp.nan, jnp.float32)
        carry = {"params": params, "opt": tx.init(params), "best": params, "best_val": jnp.inf, "bad": 0, "epoch": 0,
                     "best_epoch": 0, "key": key, "train_hist": nan, "val_hist": nan}

        def cond(c):
            return (c["epoch"] < cfg.max_epochs) & (c["bad"] < cfg.patience)

        def body(c):
            key, sub = jax.random.split(c["key"])
            order = jax.random.permutation(sub, n)
            idx = order[jnp.arange(steps * batch) % n].reshape(steps, batch)  # wrap around to full batches

            def step(state, b_idx):
                p, o = state
                loss, g = grad_fn(p, x_tr[b_idx], y_tr[b_idx])
                upd, o = tx.update(g, o, p)
                return (optax.apply_updates(p, upd), o), loss

            (params, opt), losses = jax.lax.scan(step, (c["params"], c["opt"]), idx)
            val = _loss(params, x_va, y_va)
            better = val < c["best_val"]
            best = jax.tree.map(lambda a, b: jnp.where(better, a, b), params, c["best"])
            return {"params": params, "opt": opt, "best": best, "best_val": jnp.where(better, val, c["best_val"]),
                        "bad": jnp.where(better, 0, c["bad"] + 1), "epoch": c["epoch"] + 1,
                        "best_epoch": jnp.where(better, c["epoch"] + 1, c["best_epoch"]), "key": key,
                        "train_hist": c["train_hist"].at[c["epoch"]].set(losses.mean()),
                        "val_hist": c["val_hist"].at[c["epoch"]].set(val)}

        out = jax.lax.while_loop(cond, body, carry)
        return {"params": out["best"], "epochs": out["epoch"], "best_epoch": out["best_epoch"],
                    "best_val_loss": out["best_val"], "train_loss": out["train_hist"], "val_loss": out["val_hist"]}

    return jax.vmap(one_seed)(keys)


@jax.jit
def _predict(params, x):
    return jnp.argmax(jax.vmap(lambda p: x @ p["w"] + p["b"])(params), axis=-1)  # [seeds, N]


@dataclasses.dataclass
class TrainedProbe:
    """Probes of all seeds (stacked params), the feature standardisation, and their training curves."""

    params: dict
    transform: object
    num_classes: int
    epochs: np.ndarray  # [seeds] epochs run before stopping
    best_epoch: np.ndarray
    train_loss: np.ndarray  # [seeds, max_epochs], NaN after stopping
    val_loss: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(_predict(self.params, jnp.asarray(self.transform(x))))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Metrics per seed -> ``{name}_mean`` / ``{name}_std`` (std over seeds, ddof 0)."""
        per_seed = [classification_metrics(y, pred, self.num_classes) for pred in self.predict(x)]
        out = {}
        for name in per_seed[0]:
            values = np.array([m[name] for m in per_seed])
            out[f"{name}_mean"], out[f"{name}_std"] = float(values.mean()), float(values.std())
        return out


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int,
                cfg: ProbeConfig = ProbeConfig(), seed: int = 0) -> TrainedProbe:
    transform = standardizer(x_train) if cfg.standardize else (lambda x: np.asarray(x, np.float32))
    keys = jax.random.split(jax.random.key(seed), cfg.num_seeds)
    out = _train(keys, jnp.asarray(transform(x_train)), jnp.asarray(y_train, jnp.int32),
                 jnp.asarray(transform(x_val)), jnp.asarray(y_val, jnp.int32), num_classes=num_classes, cfg=cfg)
    out = jax.device_get(out)
    return TrainedProbe(out["params"], transform, num_classes, np.asarray(out["epochs"]),
                        np.asarray(out["best_epoch"]), np.asarray(out["train_loss"]), np.asarray(out["val_loss"]))


def stratified_nested_subsets(labels: np.ndarray, fractions, seed: int = 0) -> dict[float, np.ndarray]:
    """Indices of ``fraction`` of each class (at least one per present class), nested: one random order per
    class, and each subset is a prefix of it, so smaller fractions are subsets of larger ones."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    orders = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    out = {}
    for f in sorted(fractions):
        idx = [order[:max(1, round(f * len(order)))] for order in orders.values()]
        out[f] = np.sort(np.concatenate(idx))
    return out
