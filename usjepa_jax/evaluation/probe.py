"""Linear probe on frozen features, the paper's protocol, entirely on device.

AdamW (lr 1e-3, wd 1e-4), batch 32, cosine schedule over ``max_epochs`` x steps-per-epoch, up to 150 epochs,
early stopping on the validation cross-entropy with patience 15 (the parameters of the best validation epoch are
kept), several seeds. One ``jax.jit`` holds the whole run: a ``lax.while_loop`` over epochs (it stops when the
patience runs out) around a ``lax.scan`` over the minibatches of one epoch, ``vmap``-ed over the seeds (a seed
draws the initial weights and the shuffling). Features are z-scored with the train split's statistics.
Train and validation sets are zero-padded to ``padded_size`` with the real count passed as a traced value, so
probes of different tasks and few-shot fractions reuse one compilation (the padding takes no part in any step).

The model on the features is a ``head`` (static): ``LinearHead`` here, the paper's probe; the attentive probe
(attentive.py) and the dense probe (dense.py) bring their own heads and reuse this loop unchanged. Labels are class
indices ``[N]``, or class fractions ``[N, T, C]`` per token (the dense probe: a soft cross-entropy per token,
averaged over the tokens).

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
    """z-score each feature dimension; for tokens ``[N, T, D]`` with statistics over all positions (one scale per
    dimension, so every position is read alike)."""
    axes = tuple(range(np.ndim(x_train) - 1))
    mean = x_train.mean(axes, keepdims=True)
    std = x_train.std(axes, keepdims=True) + 1e-6
    return lambda x: ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LinearHead:
    """``x @ w + b`` on the last axis: the paper's probe on pooled features ``[N, D]``, or a per-token linear map on
    tokens ``[N, T, D]`` (the dense probe). Initial weights N(0, 0.01^2), zero bias."""

    def init(self, key, feature_shape: tuple[int, ...], num_classes: int) -> dict:
        return {"w": jax.random.normal(key, (feature_shape[-1], num_classes)) * 0.01, "b": jnp.zeros((num_classes,))}

    def logits(self, params, x):
        return x @ params["w"] + params["b"]


LINEAR = LinearHead()


def _loss(params, x, y, w=None, head=LINEAR):
    """Mean cross-entropy over examples (weighted by ``w`` when given): integer labels ``[N]``, or class fractions
    ``[N, ..., C]`` (soft labels, the per-token cross-entropy averaged over the tokens of an example)."""
    logits = head.logits(params, x)
    if jnp.issubdtype(y.dtype, jnp.floating):
        ce = optax.softmax_cross_entropy(logits, y)
        ce = ce.reshape(ce.shape[0], -1).mean(axis=1)
    else:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    if w is None:
        return ce.mean()
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)


def padded_size(n: int) -> int:
    """The static size ``n`` examples are padded to, so that probes on sets of different sizes (tasks, few-shot
    fractions) share one compilation: the next power of two up to 4096 (at least 64), then multiples of 1024."""
    return max(64, 1 << (n - 1).bit_length()) if n <= 4096 else -(-n // 1024) * 1024


@functools.partial(jax.jit, static_argnames=("num_classes", "cfg", "head"))
def _train(keys, x_tr, y_tr, n_tr, x_va, y_va, w_va, *, num_classes: int, cfg: ProbeConfig, head=LINEAR):
    """``x_tr [N, D]`` holds ``n_tr`` real examples then padding (``N`` static, ``n_tr`` traced); ``w_va`` marks
    the real validation examples. Every step the unpadded run would take is taken exactly (batch ``min(batch_size,
    n)``, ``ceil(n / batch)`` steps per epoch, the cosine over ``max_epochs`` x steps); the scan runs the static
    maximum of steps and the steps past ``ceil(n / batch)`` leave the state unchanged."""
    big_n = x_tr.shape[0]
    width = min(cfg.batch_size, big_n)  # static batch slots; the first ``batch`` of them are used
    max_steps = math.ceil(big_n / width)
    batch = jnp.minimum(width, n_tr)
    steps = (n_tr + batch - 1) // batch
    total = (cfg.max_epochs * steps).astype(jnp.float32)

    def schedule(count):  # optax.cosine_decay_schedule(lr, total) with a traced total
        return cfg.lr * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count, total) / total))

    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    loss_fn = functools.partial(_loss, head=head)
    grad_fn = jax.value_and_grad(loss_fn)
    slot_valid = (jnp.arange(width) < batch).astype(jnp.float32)

    def one_seed(key):
        init_key, key = jax.random.split(key)
        params = head.init(init_key, x_tr.shape[1:], num_classes)
        nan = jnp.full((cfg.max_epochs,), jnp.nan, jnp.float32)
        carry = {"params": params, "opt": tx.init(params), "best": params, "best_val": jnp.inf, "bad": 0, "epoch": 0,
                     "best_epoch": 0, "key": key, "train_hist": nan, "val_hist": nan}

        def cond(c):
            return (c["epoch"] < cfg.max_epochs) & (c["bad"] < cfg.patience)

        def body(c):
            key, sub = jax.random.split(c["key"])
            # A random order of the real examples (padding sorts last), wrapped around to full batches; example i
            # draws its sort key from fold_in(key, i), so the order does not depend on the amount of padding.
            u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(sub, i)))(jnp.arange(big_n))
            order = jnp.argsort(jnp.where(jnp.arange(big_n) < n_tr, u, 2.0))
            slots = jnp.arange(max_steps)[:, None] * batch + jnp.arange(width)[None, :]
            idx = order[slots % n_tr]

            def update(state, b_idx):
                p, o = state
                loss, g = grad_fn(p, x_tr[b_idx], y_tr[b_idx], slot_valid)
                upd, o = tx.update(g, o, p)
                return (optax.apply_updates(p, upd), o), loss

            def step(state, inputs):
                i, b_idx = inputs
                # ``i < steps`` is the same for every seed, so under vmap this stays a real branch: the steps
                # past the epoch's end cost nothing.
                return jax.lax.cond(i < steps, update, lambda s, _: (s, jnp.float32(0.0)), state, b_idx)

            (params, opt), losses = jax.lax.scan(step, (c["params"], c["opt"]), (jnp.arange(max_steps), idx))
            val = loss_fn(params, x_va, y_va, w_va)
            better = val < c["best_val"]
            best = jax.tree.map(lambda a, b: jnp.where(better, a, b), params, c["best"])
            return {"params": params, "opt": opt, "best": best, "best_val": jnp.where(better, val, c["best_val"]),
                        "bad": jnp.where(better, 0, c["bad"] + 1), "epoch": c["epoch"] + 1,
                        "best_epoch": jnp.where(better, c["epoch"] + 1, c["best_epoch"]), "key": key,
                        "train_hist": c["train_hist"].at[c["epoch"]].set(losses.sum() / steps),
                        "val_hist": c["val_hist"].at[c["epoch"]].set(val)}

        out = jax.lax.while_loop(cond, body, carry)
        return {"params": out["best"], "epochs": out["epoch"], "best_epoch": out["best_epoch"],
                    "best_val_loss": out["best_val"], "train_loss": out["train_hist"], "val_loss": out["val_hist"]}

    return jax.vmap(one_seed)(keys)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)]) if size > len(x) else x


@functools.partial(jax.jit, static_argnames="head")
def _predict(params, x, head=LINEAR):
    return jnp.argmax(jax.vmap(lambda p: head.logits(p, x))(params), axis=-1)  # [seeds, N] (or [seeds, N, T])


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
    head: object = LINEAR

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(_predict(self.params, jnp.asarray(self.transform(x)), self.head))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Metrics per seed -> ``{name}_mean`` / ``{name}_std`` (std over seeds, ddof 0)."""
        per_seed = [classification_metrics(y, pred, self.num_classes) for pred in self.predict(x)]
        out = {}
        for name in per_seed[0]:
            values = np.array([m[name] for m in per_seed])
            out[f"{name}_mean"], out[f"{name}_std"] = float(values.mean()), float(values.std())
        return out


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int,
                cfg: ProbeConfig = ProbeConfig(), seed: int = 0, pad_to: tuple[int, int] | None = None,
                head=LINEAR, transform=None) -> TrainedProbe:
    """``pad_to``: (train, val) sizes to pad to instead of ``padded_size`` (tests: the padding changes nothing).
    ``head``: the model on the features (``LinearHead``, or the attentive / dense probes' heads); ``transform``:
    features -> what the head reads, fitted already (default: the z-scoring of ``cfg.standardize``)."""
    if transform is None:
        transform = standardizer(x_train) if cfg.standardize else (lambda x: np.asarray(x, np.float32))
    keys = jax.random.split(jax.random.key(seed), cfg.num_seeds)
    n, n_val = len(x_train), len(x_val)
    size, size_val = pad_to or (padded_size(n), padded_size(n_val))
    out = _train(keys, jnp.asarray(_pad(transform(x_train), size)), jnp.asarray(_pad(_labels(y_train), size)),
                 jnp.int32(n), jnp.asarray(_pad(transform(x_val), size_val)),
                 jnp.asarray(_pad(_labels(y_val), size_val)),
                 jnp.asarray(np.arange(size_val) < n_val, jnp.float32), num_classes=num_classes, cfg=cfg, head=head)
    out = jax.device_get(out)
    return TrainedProbe(out["params"], transform, num_classes, np.asarray(out["epochs"]),
                        np.asarray(out["best_epoch"]), np.asarray(out["train_loss"]), np.asarray(out["val_loss"]), head)


def _labels(y) -> np.ndarray:
    """Class indices ``[N]`` as int32; class fractions ``[N, T, C]`` (soft labels) as float32."""
    y = np.asarray(y)
    return y.astype(np.float32) if y.ndim > 1 else y.astype(np.int32)


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
