"""Frozen-encoder features: one jitted forward per fixed-size batch (the last one padded), patch tokens pooled.

``FeatureExtractor(encoder, pooling)`` takes a ``FrozenEncoder`` (any exported/imported encoder, or a random init
wrapped by ``random_encoder``) and maps uint8 images ``[N, H, W, 1]`` to pooled features ``[N, D]`` (float32 numpy),
or to the patch tokens ``[N, T, D]`` with ``tokens``; ``pixel_tokens`` gives raw pixels the same token form.

``FeatureStore(directory, extractor)`` keeps pooled features on disk, one ``.npy`` per key (an encoder, a task
split, a corruption): computed once, reused by every later evaluation, and written chunk by chunk (with images/s
and an ETA logged) so that an interrupted extraction continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from usjepa_jax import config as config_lib
from usjepa_jax.encoders import FrozenEncoder, params_hash
from usjepa_jax.models.vit import VisionTransformer


def pool(tokens: jax.Array, pooling: str) -> jax.Array:
    """``[B, T, D]`` -> ``[B, D]`` (mean, max) or ``[B, 2D]`` (mean_max)."""
    if pooling == "mean":
        return tokens.mean(axis=1)
    if pooling == "max":
        return tokens.max(axis=1)
    if pooling == "mean_max":
        return jnp.concatenate([tokens.mean(axis=1), tokens.max(axis=1)], axis=-1)
    raise ValueError(f"pooling={pooling!r}: expected mean, max or mean_max.")


def pixel_tokens(images: np.ndarray, patch: int) -> np.ndarray:
    """Raw pixels as tokens: uint8 images ``[N, S, S(, 1)]`` -> ``[N, (S // patch)^2, patch^2]`` in [0, 1], one
    token per non-overlapping patch in row-major order, as a ViT's patch grid: so the token readouts (attentive,
    dense) read the pixels exactly as they read an encoder's tokens."""
    images = np.asarray(images)
    images = images[..., 0] if images.ndim == 4 else images
    n, s = images.shape[:2]
    g = s // patch
    grid = images[:, :g * patch, :g * patch].reshape(n, g, patch, g, patch).transpose(0, 1, 3, 2, 4)
    return grid.reshape(n, g * g, patch * patch).astype(np.float32) / 255


def random_encoder(model_cfg: ml_collections.ConfigDict, image_size: int, *, mean: float = 0.5, std: float = 0.5,
                   seed: int = 0) -> FrozenEncoder:
    """A randomly initialised encoder of ``model_cfg`` (the floor every method should beat)."""
    module = VisionTransformer(**config_lib.encoder_kwargs(model_cfg), dtype=jnp.dtype(model_cfg.dtype))
    params = module.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 1)))["params"]
    params = jax.tree.map(np.asarray, params)
    return FrozenEncoder(module, params, 1, mean, std, f"random-init(seed={seed})", params_hash(params))


class FeatureExtractor:
    """``extractor(images)`` -> pooled features, ``extractor.tokens(images)`` -> patch tokens, with the encoder's
    own parameters or, e.g. for the k-NN monitor during training, with ``params=`` the current (sharded) ones.

    ``mesh``: outputs are replicated over it (so every process of a multi-process run can read them)."""

    def __init__(self, encoder: FrozenEncoder, pooling: str = "mean", batch_size: int = 64,
                 mesh: jax.sharding.Mesh | None = None):
        pool(jnp.zeros((1, 1, 1)), pooling)  # fail early on a bad name
        self.encoder, self.pooling, self.batch_size = encoder, pooling, int(batch_size)
        self.params = None if encoder.params is None else jax.device_put(encoder.params)
        out = {} if mesh is None else {"out_shardings": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())}
        self._pooled = jax.jit(lambda p, x: pool(encoder.embed(p, x).astype(jnp.float32), pooling), **out)
        self._tokens = jax.jit(lambda p, x: encoder.embed(p, x).astype(jnp.float32), **out)

    def _run(self, fn, images: np.ndarray, params=None) -> np.ndarray:
        params = self.params if params is None else params
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        n, b = len(images), self.batch_size
        out = []
        for start in range(0, n, b):
            chunk = images[start:start + b]
            pad = b - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            out.append((fn(params, chunk), b - pad))  # dispatched asynchronously: the next batch overlaps
        return np.concatenate([np.asarray(o)[:k] for o, k in out])

    def __call__(self, images: np.ndarray, params=None) -> np.ndarray:
        return self._run(self._pooled, images, params)

    def tokens(self, images: np.ndarray, params=None) -> np.ndarray:
        return self._run(self._tokens, images, params)


class FeatureStore:
    """Pooled features on disk, ``directory/<key>.npy``, extracted once and resumable (see the module docstring).

    ``get(key, images)``: ``images`` is the array, or a function returning it (called only when the features are
    not stored yet, e.g. to corrupt the test images only when needed). Partial results live in
    ``<key>.partial.npy`` (a memory map) with the row count done in ``<key>.partial.json``, updated per chunk.
    """

    def __init__(self, directory: str | Path, extractor: FeatureExtractor, chunk: int = 2048,
                 log: Callable[[str], None] | None = None):
        self.directory, self.extractor, self.chunk = Path(directory), extractor, int(chunk)
        self.log = log or (lambda msg: None)
        self.seconds, self.images = 0.0, 0  # extraction work done by this store (for throughput reports)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npy"

    def get(self, key: str, images: np.ndarray | Callable[[], np.ndarray]) -> np.ndarray:
        final = self.path(key)
        if final.exists():
            return np.load(final)
        images = np.asarray(images() if callable(images) else images)
        n = len(images)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial, state = final.with_suffix(".partial.npy"), final.with_suffix(".partial.json")
        done = json.loads(state.read_text())["done"] if state.exists() and partial.exists() else 0
        out = None
        if done:
            out = np.load(partial, mmap_mode="r+")
            if len(out) != n:
                done, out = 0, None
            else:
                self.log(f"features {key}: resuming at {done}/{n}")
        start_time = time.perf_counter()
        last = start_time
        for start in range(done, n, self.chunk):
            feats = self.extractor(images[start:start + self.chunk])
            if out is None:
                out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n,) + feats.shape[1:])
            out[start:start + len(feats)] = feats
            out.flush()
            state.write_text(json.dumps({"done": start + len(feats), "total": n}))
            now = time.perf_counter()
            if now - last > 10 or start + len(feats) == n:
                rate = (start + len(feats) - done) / max(now - start_time, 1e-9)
                eta = (n - start - len(feats)) / max(rate, 1e-9)
                self.log(f"features {key}: {start + len(feats)}/{n} images, {rate:.0f} images/s, ETA {eta:.0f}s")
                last = now
        self.seconds += time.perf_counter() - start_time
        self.images += n - done
        result = np.array(out) if out is not None else np.zeros((0, 0), np.float32)
        del out
        np.save(final, result)
        partial.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
        return result
