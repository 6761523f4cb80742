"""Multi-block masking (I-JEPA / US-JEPA) and its USrc variant, sampled per image in numpy.

One sample of :class:`MultiBlockMaskSampler` is, on the ``gh x gw`` patch grid:

* ``num_targets`` target blocks. Each draws a scale ``s ~ U(target_scale)`` and an aspect ``a ~ U(target_aspect)``
  (independently, per block), gets the size ``h = round(sqrt(s*N*a))``, ``w = round(sqrt(s*N/a))`` (``N = gh*gw``)
  clipped to ``[1, gh] x [1, gw]``, and a top-left corner drawn uniformly so that the block lies fully inside the
  grid (``top`` in ``[0, gh-h]`` inclusive). Target blocks may overlap each other. A block with fewer than
  ``min_keep`` patches is redrawn (size and corner).
* one context block (``context_scale``, ``context_aspect``, same rule); the context keeps the patches of that block
  that lie outside *every* target block, and must keep at least ``min_keep`` of them, otherwise the whole sample
  (targets and context) is redrawn.

Differences from the official I-JEPA collator (facebookresearch/ijepa, ``src/masks/multiblock.py``), on purpose:

* Corners: the official code draws them with an exclusive upper bound and clips sizes to ``gh-1``/``gw-1``, so the
  last patch row and column are never in any block (at 224/16 the context block is always 13x13 at the top-left).
  That behaviour is available as ``official_corner_quirk=True``; the default covers the whole grid.
* The official code draws one block size per *batch* (shared by all images and all target blocks) with a single
  uniform number driving both scale and aspect, uses ``int(s*N)``, and, when the context gets too small, drops
  target constraints one by one. Here sizes are drawn per block with independent scale and aspect, and a sample
  that violates ``min_keep`` is redrawn entirely, so every returned mask satisfies the rule exactly.

Static shapes (the documented rule: **pad with a validity mask, never drop a patch**). From the configuration
alone we enumerate every block size ``(h, w)`` the rule can produce (exactly, see :func:`achievable_block_sizes`)
and take

* ``T = target_len`` = the largest target block area among the sizes that pass ``min_keep``;
* ``C = context_len`` = ``max over context sizes (hc, wc) of [hc*wc - min over target sizes of the smallest
  possible overlap of a target with that context block]``. A target always removes at least that many patches
  from the context block, so ``C`` is a true upper bound on the number of context patches (with a context block
  smaller than the grid a target may lie mostly outside it, which is why ``max context - min target`` alone would
  not be an upper bound). With ``max_context`` set, a context with more patches than the cap keeps a uniformly
  random subset of ``max_context`` patches (a documented deviation that reduces compute), and
  ``C = min(max_context, bound)``.

Outputs are flat row-major patch indices, sorted ascending within the valid (leading) part; padded slots hold
index 0 (a valid index, so gathers never go out of range) with ``valid = False``.

Per-batch padding buckets (compute on real tokens only, a handful of static shapes). ``C`` and ``T`` are bounds
that few masks reach (at 224/16 with the US-JEPA scales ``C = 184`` while contexts average ~119 patches, and the
predictor repeats the padded context for each target block). Before a batch enters the step, its context and
target arrays are cut to the smallest rung of a fixed ladder that holds the batch's largest mask
(:meth:`MultiBlockMaskSampler.batch_lengths`, :func:`fit_batch`): the rungs are ``C, C - pad_step, ...``
(``pad_buckets`` of them, at least 1 each) and likewise for ``T``. Only padding is cut (valid entries lead every
row), so the computation is the same as at full padding (tested: loss and gradients to float tolerance), and at
most ``pad_buckets`` x ``pad_buckets`` shapes are ever compiled (in practice 3-5: batch maxima concentrate). The
rung depends on the *global* batch only (the trainer takes the maximum over processes), so batches and results
do not depend on the process count, and a resumed run sees the same shapes. ``pad_buckets = 1`` restores the
fixed ``C``/``T`` padding. ``truncate_to_batch_min = True`` is the official I-JEPA collator's rule, a documented
compatibility switch that *drops* patches: every row is cut to the batch's smallest mask (context and targets),
rounded down to a rung (so that the shapes stay bounded; below the lowest rung, the minimum itself).

USrc (``min_valid_in_target = tau`` and a scan mask given): a patch is valid when any of its pixels touches the
scan region (:func:`patch_valid_from_scan_mask`); each target block is redrawn until it holds at least ``tau``
valid patches (and, as always, has at least ``min_keep`` patches); only valid patches are listed in the target
and context arrays (invalid ones are left out, i.e. they end up in padding with ``valid = False``), and the
context must keep at least ``max(min_keep, tau)`` valid patches. Without a scan mask every patch counts as valid.

``min_keep`` is met with ``>=`` (a block of exactly ``min_keep`` patches is kept); the official collator keeps a
mask only with ``>`` ``min_keep`` patches. A documented deviation: the configs' ``min_keep``
means "at least", as the papers state it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Iterable

import ml_collections
import numpy as np

_EPS = 1e-9  # widening of the closed-interval feasibility test (floating point), keeps the bounds conservative


# ------------------------------------------------------------------------------------------------ geometry
def block_size(s: float, a: float, num_patches: int, max_h: int, max_w: int) -> tuple[int, int]:
    """The block size rule: ``h = round(sqrt(s*N*a))``, ``w = round(sqrt(s*N/a))``, clipped to ``[1, max]``."""
    h = round(math.sqrt(s * num_patches * a))
    w = round(math.sqrt(s * num_patches / a))
    return min(max(h, 1), max_h), min(max(w, 1), max_w)


def _round_preimage_log(k: int) -> tuple[float, float]:
    """``log u`` interval of the ``u`` with ``round(sqrt(u)) == k`` (closed, so ties count both ways)."""
    lo = (k - 0.5) ** 2 if k > 0 else 1e-300  # k = 0: any tiny u (log stays finite)
    return math.log(lo), math.log((k + 0.5) ** 2)


def _raw_size_feasible(h: int, w: int, scale: tuple[float, float], aspect: tuple[float, float], n: int) -> bool:
    """Whether some ``s`` in ``scale`` and ``a`` in ``aspect`` give the unclipped rounded size ``(h, w)``.

    With ``x = log(s*N*a)``, ``y = log(s*N/a)``: ``x`` and ``y`` lie in the rounding pre-images of ``h`` and ``w``
    (a box), ``x + y = 2 log(s*N)`` and ``x - y = 2 log(a)`` in their ranges (a rotated box). The projection of the
    box intersected with the ``x - y`` strip onto ``x + y`` is an interval whose ends are the minimum of a convex and
    the maximum of a concave piecewise-linear function of ``d = x - y``: an exact test, no sampling.
    """
    x0, x1 = _round_preimage_log(h)
    y0, y1 = _round_preimage_log(w)
    p0, p1 = 2 * math.log(scale[0] * n), 2 * math.log(scale[1] * n)
    q0, q1 = 2 * math.log(aspect[0]), 2 * math.log(aspect[1])
    d0, d1 = max(x0 - y1, q0), min(x1 - y0, q1)
    if d0 > d1 + _EPS:
        return False

    d_lo = min(max(x0 - y0, d0), d1)  # minimiser of the lower end max(2*x0 - d, 2*y0 + d)
    lowest = max(2 * x0 - d_lo, 2 * y0 + d_lo)
    d_hi = min(max(x1 - y1, d0), d1)  # maximiser of the upper end min(2*x1 - d, 2*y1 + d)
    highest = min(2 * x1 - d_hi, 2 * y1 + d_hi)
    return lowest <= p1 + _EPS and highest >= p0 - _EPS


def achievable_block_sizes(scale: tuple[float, float], aspect: tuple[float, float], grid: tuple[int, int],
                           max_h: int | None = None, max_w: int | None = None) -> frozenset[tuple[int, int]]:
    """Every ``(h, w)`` that :func:`block_size` can return for ``s`` in ``scale``, ``a`` in ``aspect`` (clipped)."""
    gh, gw = grid
    n = gh * gw
    max_h = gh if max_h is None else max_h
    max_w = gw if max_w is None else max_w
    h_top = math.ceil(math.sqrt(scale[1] * n * aspect[1])) + 1
    w_top = math.ceil(math.sqrt(scale[1] * n / aspect[0])) + 1
    return frozenset((min(max(h, 1), max_h), min(max(w, 1), max_w))
                     for h in range(h_top + 1) for w in range(w_top + 1)
                     if _raw_size_feasible(h, w, scale, aspect, n))


def _min_overlap(h: int, w: int, hc: int, wc: int, grid: tuple[int, int]) -> int:
    """Smallest overlap of an ``h x w`` and an ``hc x wc`` block, both anywhere inside ``grid``."""
    return max(0, h + hc - grid[0]) * max(0, w + wc - grid[1])


def patch_valid_from_scan_mask(scan_mask: np.ndarray, grid_size: tuple[int, int], whole: bool = False) -> np.ndarray:
    """``scan_mask [H, W]`` (or ``[H, W, 1]``, bool/uint8) -> ``bool [gh*gw]``: a patch is valid when any of its
    pixels (``whole``: all of them) lies in the scan region. ``H`` and ``W`` must be multiples of ``gh`` and ``gw``."""
    m = np.asarray(scan_mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    gh, gw = grid_size
    if m.ndim != 2 or m.shape[0] % gh or m.shape[1] % gw:
        raise ValueError(f"scan_mask of shape {np.shape(scan_mask)} does not tile the patch grid {grid_size} "
                         "(expected [H, W] with H % gh == 0 and W % gw == 0)")
    ph, pw = m.shape[0] // gh, m.shape[1] // gw
    cells = (m != 0).reshape(gh, ph, gw, pw)
    return (cells.all(axis=(1, 3)) if whole else cells.any(axis=(1, 3))).reshape(-1)


# ------------------------------------------------------------------------------------------------ sampler
def _as_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return v


def _as_range(name: str, value, upper: float | None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo > hi:
        raise ValueError(f"{name}: min > max in {value!r}")
    if lo <= 0 or (upper is not None and hi > upper):
        bound = f"(0, {upper}]" if upper is not None else "(0, inf)"
        raise ValueError(f"{name} must lie in {bound}, got {value!r}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class MultiBlockMaskSampler:
    """Per-image multi-block mask sampler (see the module docstring). Picklable; deterministic given ``rng``."""

    grid_size: tuple[int, int]  # patch grid (gh, gw), e.g. (14, 14) for 224/16
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.075, 0.125)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 10
    official_corner_quirk: bool = False
    max_context: int | None = None
    min_valid_in_target: int | None = None  # USrc tau
    max_tries: int = 200
    pad_buckets: int = 6  # rungs of the per-batch padding ladder (1 = always pad to context_len/target_len)
    pad_step: int = 8  # distance between rungs (patches)
    truncate_to_batch_min: bool = False  # the official collator's rule: drops patches (compatibility only)

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        try:
            gh, gw = self.grid_size
        except (TypeError, ValueError):
            raise ValueError(f"grid_size must be a pair (gh, gw), got {self.grid_size!r}") from None
        quirk = bool(self.official_corner_quirk)
        set_("official_corner_quirk", quirk)
        smallest = 2 if quirk else 1
        set_("grid_size", (_as_int("grid_size[0]", gh, smallest), _as_int("grid_size[1]", gw, smallest)))
        set_("num_targets", _as_int("num_targets", self.num_targets, 1))
        set_("target_scale", _as_range("target_scale", self.target_scale, 1.0))
        set_("context_scale", _as_range("context_scale", self.context_scale, 1.0))
        set_("target_aspect", _as_range("target_aspect", self.target_aspect, None))
        set_("context_aspect", _as_range("context_aspect", self.context_aspect, None))
        set_("min_keep", _as_int("min_keep", self.min_keep, 1))
        set_("max_tries", _as_int("max_tries", self.max_tries, 1))
        set_("pad_buckets", _as_int("pad_buckets", self.pad_buckets, 1))
        set_("pad_step", _as_int("pad_step", self.pad_step, 1))
        if not isinstance(self.truncate_to_batch_min, (bool, np.bool_)):
            raise TypeError(f"truncate_to_batch_min must be True or False, got {self.truncate_to_batch_min!r}")
        set_("truncate_to_batch_min", bool(self.truncate_to_batch_min))
        if self.max_context is not None:
            set_("max_context", _as_int("max_context", self.max_context, self.min_keep))
        if self.min_valid_in_target is not None:
            set_("min_valid_in_target", _as_int("min_valid_in_target", self.min_valid_in_target, 1))
        # Feasibility, from the enumerated sizes: fail here rather than after max_tries at the first sample.
        if not self._target_sizes:
            largest = max(h * w for h, w in self._all_target_sizes)
            raise ValueError(
                f"min_keep={self.min_keep} (with min_valid_in_target={self.min_valid_in_target}) cannot be met: the "
                f"largest target block for target_scale={self.target_scale}, target_aspect={self.target_aspect} on "
                f"grid_size={self.grid_size} has {largest} patches")
        if self._context_bound < self.min_keep:
            raise ValueError(f"min_keep={self.min_keep} cannot be met by the context: at most {self._context_bound} "
                             f"patches survive for context_scale={self.context_scale} on grid_size={self.grid_size}")

    # ---- static geometry (pure functions of the configuration; cached on the instance)
    @property
    def _block_grid(self) -> tuple[int, int]:
        """The part of the grid blocks can occupy (the official quirk never reaches the last row/column)."""
        gh, gw = self.grid_size
        return (gh - 1, gw - 1) if self.official_corner_quirk else (gh, gw)

    @functools.cached_property
    def _all_target_sizes(self) -> frozenset[tuple[int, int]]:
        return achievable_block_sizes(self.target_scale, self.target_aspect, self.grid_size, *self._block_grid)

    @functools.cached_property
    def _target_sizes(self) -> frozenset[tuple[int, int]]:
        """Target sizes that can be accepted (``min_keep`` patches, and ``tau`` valid ones at best)."""
        need = max(self.min_keep, self.min_valid_in_target or 0)
        return frozenset(hw for hw in self._all_target_sizes if hw[0] * hw[1] >= need)

    @functools.cached_property
    def _context_sizes(self) -> frozenset[tuple[int, int]]:
        return achievable_block_sizes(self.context_scale, self.context_aspect, self.grid_size, *self._block_grid)

    @functools.cached_property
    def _context_bound(self) -> int:
        g = self._block_grid
        return max(hc * wc - min(_min_overlap(h, w, hc, wc, g) for h, w in self._target_sizes)
                   for hc, wc in self._context_sizes)

    @property
    def target_len(self) -> int:
        """``T``: the largest possible target block (padded length of each row of ``target_idx``)."""
        return max(h * w for h, w in self._target_sizes)

    @property
    def context_len(self) -> int:
        """``C``: an upper bound on the context size, or ``max_context`` when that is smaller."""
        if self.max_context is None:
            return self._context_bound
        return min(self.max_context, self._context_bound)

    # ---- per-batch padding buckets (module docstring)
    def _ladder(self, full: int) -> tuple[int, ...]:
        return padding_ladder(full, self.pad_step, self.pad_buckets)

    @property
    def context_buckets(self) -> tuple[int, ...]:
        """The static context lengths a batch can be cut to, ascending (the last is ``context_len``)."""
        return self._ladder(self.context_len)

    @property
    def target_buckets(self) -> tuple[int, ...]:
        return self._ladder(self.target_len)

    @property
    def max_batch_shapes(self) -> int:
        """The documented bound on the number of distinct step shapes (compilations) over any run."""
        return len(self.context_buckets) * len(self.target_buckets)

    def batch_lengths(self, context_counts: tuple[int, int], target_counts: tuple[int, int]) -> tuple[int, int]:
        """``(C_b, T_b)`` of a batch from the ``(min, max)`` valid patches per context row and per target row
        (over the *global* batch). Padding: the smallest rung >= the max. ``truncate_to_batch_min``: the largest
        rung <= the min (the min itself below the lowest rung)."""
        def rung(ladder: tuple[int, ...], counts: tuple[int, int]) -> int:
            low, high = counts
            if self.truncate_to_batch_min:
                return max([r for r in ladder if r <= low], default=max(low, 1))
            return min(r for r in ladder if r >= high)
        return rung(self.context_buckets, context_counts), rung(self.target_buckets, target_counts)

    # ---- sampling
    def _draw_block(self, rng: np.random.Generator, scale, aspect) -> tuple[int, int, int, int]:
        bh, bw = self._block_grid
        s = rng.uniform(*scale)
        a = rng.uniform(*aspect)
        h, w = block_size(s, a, self.grid_size[0] * self.grid_size[1], bh, bw)
        top = int(rng.integers(0, bh - h + 1))
        left = int(rng.integers(0, bw - w + 1))
        return top, left, h, w

    def _draw_target(self, rng: np.random.Generator, valid: np.ndarray | None) -> np.ndarray:
        tau = self.min_valid_in_target
        for _ in range(self.max_tries):
            top, left, h, w = self._draw_block(rng, self.target_scale, self.target_aspect)
            if h * w < self.min_keep:
                continue
            block = np.zeros(self.grid_size, bool)
            block[top:top + h, left:left + w] = True
            if valid is not None and np.count_nonzero(block & valid) < tau:
                continue
            return block
        raise RuntimeError(
            f"MultiBlockMaskSampler: no target block with >= {self.min_keep} patches"
            + (f" and >= {tau} valid patches (min_valid_in_target)" if valid is not None else "")
            + f" after max_tries={self.max_tries} draws; grid_size={self.grid_size}, "
            f"target_scale={self.target_scale}. Is the scan region large enough?")

    def __call__(self, rng: np.random.Generator, scan_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One sample: ``context_idx int32 [C]``, ``context_valid bool [C]``, ``target_idx int32 [M, T]``,
        ``target_valid bool [M, T]`` (valid entries first, sorted ascending; padding is index 0, invalid)."""
        valid, need = None, self.min_keep
        if self.min_valid_in_target is not None and scan_mask is not None:
            valid = patch_valid_from_scan_mask(scan_mask, self.grid_size).reshape(self.grid_size)
            need = max(self.min_keep, self.min_valid_in_target)  # the context keeps tau valid patches too
        for _ in range(self.max_tries):
            targets = [self._draw_target(rng, valid) for _ in range(self.num_targets)]
            top, left, h, w = self._draw_block(rng, self.context_scale, self.context_aspect)
            ctx = np.zeros(self.grid_size, bool)
            ctx[top:top + h, left:left + w] = True
            for t in targets:
                ctx &= ~t
            if valid is not None:
                ctx &= valid
            if np.count_nonzero(ctx) >= need:
                break
        else:
            raise RuntimeError(
                f"MultiBlockMaskSampler: no context with >= {need} patches (min_keep={self.min_keep}"
                + (f", min_valid_in_target={self.min_valid_in_target}: valid ones, USrc)" if valid is not None
                   else ")")
                + f" after max_tries={self.max_tries} samples; grid_size={self.grid_size}, "
                f"context_scale={self.context_scale}, num_targets={self.num_targets}")

        context = np.flatnonzero(ctx)
        if len(context) > self.context_len:
            if self.max_context is None:  # cannot happen: context_len is a proven bound
                raise AssertionError(f"context of {len(context)} patches exceeds context_len={self.context_len}")
            context = np.sort(rng.choice(context, self.context_len, replace=False))
        context_idx, context_valid = _pad(context, self.context_len)
        target_idx = np.zeros((self.num_targets, self.target_len), np.int32)
        target_valid = np.zeros((self.num_targets, self.target_len), bool)
        for m, t in enumerate(targets):
            if valid is not None:
                t = t & valid
            target_idx[m], target_valid[m] = _pad(np.flatnonzero(t), self.target_len)
        return {"context_idx": context_idx, "context_valid": context_valid,
                    "target_idx": target_idx, "target_valid": target_valid}

    # ---- configuration
    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, grid_size: tuple[int, int]) -> MultiBlockMaskSampler:
        """Build from ``config.masks`` (the keys of :func:`default_mask_config`); unknown keys are refused."""
        return cls(grid_size=tuple(grid_size), **_fields_from_config(cfg))


_TUPLE_FIELDS = ("target_scale", "target_aspect", "context_scale", "context_aspect")


def _fields_from_config(cfg) -> dict:
    known = [f.name for f in dataclasses.fields(MultiBlockMaskSampler) if f.name != "grid_size"]
    items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    unknown = sorted(set(items) - set(known))
    if unknown:
        raise ValueError(f"Unknown mask config key(s) {unknown}; known: {known}")
    out = {}
    for k, v in items.items():
        if isinstance(v, ml_collections.FieldReference):
            v = v.get()
        out[k] = tuple(v) if k in _TUPLE_FIELDS and isinstance(v, Iterable) else v
    return out


def mask_sampler_from_config(cfg: ml_collections.ConfigDict, grid_size: tuple[int, int]) -> MultiBlockMaskSampler:
    """Function form of :meth:`MultiBlockMaskSampler.from_config`."""
    return MultiBlockMaskSampler.from_config(cfg, grid_size)


def default_mask_config() -> ml_collections.ConfigDict:
    """The US-JEPA defaults as ``config.masks`` (every field of the sampler except ``grid_size``)."""
    d = {f.name: f.default for f in dataclasses.fields(MultiBlockMaskSampler) if f.name != "grid_size"}
    d["max_context"] = ml_collections.FieldReference(None, field_type=int)
    d["min_valid_in_target"] = ml_collections.FieldReference(None, field_type=int)
    return ml_collections.ConfigDict(d)


def valid_counts(batch: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """``(min, max)`` valid patches per row of the context and of the target arrays of a (local) batch."""
    ctx = np.asarray(batch["context_valid"]).sum(axis=-1)
    tgt = np.asarray(batch["target_valid"]).sum(axis=-1)
    return {"context": (int(ctx.min()), int(ctx.max())), "target": (int(tgt.min()), int(tgt.max()))}


def padding_ladder(full: int, step: int, buckets: int) -> tuple[int, ...]:
    """The lengths ``full, full - step, ...`` (``buckets`` of them, at least 1 each), ascending: the static lengths a
    batch (the sampler's rungs) or a micro-batch (``optim.micro_pad_buckets``) can be cut to."""
    return tuple(sorted({max(full - i * step, 1) for i in range(buckets)}))


def fit_batch(batch: dict[str, np.ndarray], context_len: int, target_len: int) -> dict[str, np.ndarray]:
    """The batch with its context arrays cut to ``context_len`` and its target arrays to ``target_len`` slots.

    Valid entries lead every row, so a cut at or above each row's valid count only removes padding; below it
    (``truncate_to_batch_min``) each row keeps its first ``context_len`` patches (the official I-JEPA rule).
    Other keys pass through unchanged.
    """
    out = dict(batch)
    for key in ("context_idx", "context_valid"):
        out[key] = batch[key][..., :context_len]
    for key in ("target_idx", "target_valid"):
        out[key] = batch[key][..., :target_len]
    return out


def _pad(idx: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros(length, np.int32)
    ok = np.zeros(length, bool)
    out[:len(idx)] = idx
    ok[:len(idx)] = True
    return out, ok
