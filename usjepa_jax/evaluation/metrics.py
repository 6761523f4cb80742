"""Cheap metrics on feature matrices: cosine k-NN, collapse monitors (per-dimension std, RankMe), speckle
invariance. All take numpy features and return ``{name: float}``."""

from __future__ import annotations

import numpy as np

from usjepa_jax.evaluation.probe import classification_metrics


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_classify(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> np.ndarray:
    """Cosine k-NN; the k nearest vote with weight exp(sim / temperature) (DINO's weighted k-NN)."""
    k = min(k, len(x_train))
    train, y_train = _normalize(x_train), np.asarray(y_train)
    preds = []
    for start in range(0, len(x_test), 1024):
        sims = _normalize(x_test[start:start + 1024]) @ train.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.exp(np.take_along_axis(sims, top, 1) / temperature)
        votes = np.zeros((len(sims), num_classes))
        np.add.at(votes, (np.arange(len(sims))[:, None], y_train[top]), w)
        preds.append(votes.argmax(1))
    return np.concatenate(preds)


def knn_metrics(x_train, y_train, x_test, y_test, num_classes: int, k: int = 20, temperature: float = 0.07):
    return classification_metrics(y_test, knn_classify(x_train, y_train, x_test, num_classes, k, temperature),
                                  num_classes)


def rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of ``x [N, D]``."""
    s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    p = s / max(s.sum(), 1e-300) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def collapse_metrics(x: np.ndarray) -> dict[str, float]:
    """Per-dimension std of the embeddings (raw and of the L2-normalised ones, where 1/sqrt(D) means spread and
    0 collapse), the fraction of dead dimensions (std < 1e-4 of the largest), and RankMe (max min(N, D))."""
    x = np.asarray(x, np.float64)
    std = x.std(0)
    std_n = _normalize(x).std(0)
    return {"std_mean": float(std.mean()), "std_min": float(std.min()), "std_max": float(std.max()),
                "normalized_std_mean": float(std_n.mean()), "normalized_std_ideal": float(1 / np.sqrt(x.shape[1])),
                "dead_fraction": float((std < 1e-4 * max(std.max(), 1e-30)).mean()), "rankme": rankme(x),
                "rankme_max": float(min(x.shape))}


def between_anatomy_fraction(x: np.ndarray) -> float:
    """``x [M, K, ..., D]`` (M anatomies x K speckle realisations, optionally per patch position): the share of the
    variance (about the mean over all M K images, per position) that lies between the anatomy means. 1: speckle
    moves nothing; about ``(M - 1) / (M K - 1)`` when the anatomy does not matter; 0 for constant features."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=(0, 1))
    total = float((centred**2).sum())
    between = float(x.shape[1] * (centred.mean(axis=1) ** 2).sum())
    return between / total if total > 1e-12 else 0.0


def speckle_invariance(features: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, float]:
    """``features [M, K, D]``: M anatomies, each embedded under K speckle realisations (same acquisition).

    ``within``: mean cosine similarity over pairs of different realisations of the same anatomy; ``across``: over
    pairs of different anatomies; ``ratio = within / across`` (1: speckle moves the embedding as much as the
    anatomy does; large: the embedding encodes anatomy, not speckle); ``gap = within - across``; ``retrieval``:
    fraction of embeddings whose nearest other embedding is of the same anatomy (ties split evenly; chance
    ``(K-1)/(MK-1)``). Raw cosine similarities of pooled embeddings share a large common component (``across``
    near 1), which squeezes the ratio towards 1; ``anatomy_variance_fraction`` is free of it: the share of the
    embeddings' variance between anatomy means (``between_anatomy_fraction``). Mean pooling averages most speckle
    away, so with ``tokens [M, K, N, D]`` (patch tokens at N aligned positions inside the scan) the same fraction is
    also reported per patch position: ``patch_anatomy_variance_fraction``, the stricter test.
    """
    m, k, _ = features.shape
    z = _normalize(features.reshape(m * k, -1))
    sims = z @ z.T
    anatomy = np.repeat(np.arange(m), k)
    same = anatomy[:, None] == anatomy[None, :]
    off_diag = ~np.eye(m * k, dtype=bool)
    within = float(sims[same & off_diag].mean())
    across = float(sims[~same].mean())
    masked = np.where(off_diag, sims, -np.inf)
    # Nearest neighbour with ties broken at random (in expectation): constant features give chance, not 1.
    ties = masked >= masked.max(1, keepdims=True) - 1e-9
    hit = (ties & same).sum(1) / ties.sum(1)
    out = {"within": within, "across": across, "ratio": within / across if abs(across) > 1e-12 else float("inf"),
           "gap": within - across, "retrieval": float(hit.mean()), "chance_retrieval": (k - 1) / (m * k - 1),
           "anatomy_variance_fraction": between_anatomy_fraction(features),
           "anatomy_variance_fraction_chance": (m - 1) / (m * k - 1)}
    if tokens is not None:
        if tokens.shape[:2] != (m, k) or tokens.ndim != 4:
            raise ValueError(f"speckle_invariance: tokens of shape {tokens.shape}, expected ({m}, {k}, N, D).")
        out["patch_anatomy_variance_fraction"] = between_anatomy_fraction(tokens)
    return out
