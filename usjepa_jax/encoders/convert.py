"""timm-style ViT state dicts <-> our ``VisionTransformer`` parameters.

Import: ``from_state_dict(flat)`` finds the encoder in a flat ``{dotted.name: array}`` state dict (choosing a key
scheme from ``SCHEMES``), infers the architecture from the weights, maps every tensor through ``PARAM_TABLE``
(torch Conv ``OIHW`` -> flax ``HWIO``, Linear ``[out, in]`` -> ``[in, out]``; the fused ``qkv`` layout
``[3, heads, head_dim]`` is the same on both sides), and checks every shape. Export: ``to_timm_state_dict``.

What is inferred from the weights: width (``patch_embed.proj.weight`` dim 0), patch size and in_channels (its
other dims), depth (the ``blocks.N`` count), mlp_dim (``fc1`` rows), class token (``cls_token`` present), and the
position embedding: a ``pos_embed`` equal (to 1e-6) to the 2-D sin-cos table of its grid (I-JEPA, MAE, our own
exports) is loaded as fixed ``sincos2d`` (exact at any resolution), any other ``pos_embed`` as learned
(``posemb='learn'``); a class-token position (``pos_embed`` of length grid + 1, timm's default) becomes
``cls_pos_embed``, none (timm ``no_embed_class=True``) gives a zero ``cls_pos_embed``.

What is not in the weights: the number of heads. Resolution order: the explicit argument, a sidecar JSON, then
``default_num_heads``: the heads of the ``VARIANTS`` entry with the same width and depth (so ViT-H gets 16), else
``width // 64`` (timm's ViT-Ti/S/B/L all have 64-dim heads).

Learned position embeddings are resampled to the requested grid with ``jax.image.resize`` (``bicubic`` by
default, or ``bilinear``; Keys cubic with a=-0.5 and antialiasing when shrinking, so not bit-identical to torch's
``F.interpolate`` bicubic with a=-0.75, as timm uses; at the native grid nothing is resampled).

BEiT layout (timm ``Beit``, USFM-like teachers): relative position bias tables per block
(``blocks.N.attn.relative_position_bias_table``, or one shared ``rel_pos_bias.relative_position_bias_table``,
added to each block's), layer scale (``gamma_1/gamma_2``; timm ViT's ``ls1.gamma/ls2.gamma`` too), separate
``q_bias``/``v_bias`` (merged into the ``qkv`` bias with a zero k part: exact), no absolute position embedding
(``posemb='none'``) and no final ``norm`` (mean-pooling heads norm after pooling: ``final_norm=False``). The
heads are then read from the tables; the grid from their size. The tables are not resampled: such a teacher is
used at its own resolution.

Adding a key scheme: append a ``KeyScheme`` (the prefix that holds the encoder, renames into timm names if the
names differ, extra ignorable keys) to ``SCHEMES``; schemes are tried in order, the first whose prefix holds a
``patch_embed.proj.weight`` wins.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from usjepa_jax.models.vit import VARIANTS, VisionTransformer, sincos_posemb_2d


@dataclasses.dataclass(frozen=True)
class KeyScheme:
    """Where a checkpoint keeps its ViT encoder, and how its names map to timm's."""

    name: str
    prefix: str  # regex, anchored at the start of a key; the matched part is stripped
    renames: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to stripped names -> timm names
    ignore: tuple[str, ...] = ()  # extra regexes (on timm names) of keys that are not needed for patch tokens


SCHEMES: tuple[KeyScheme, ...] = (
    # Official I-JEPA checkpoints: {'encoder', 'predictor', 'target_encoder', 'opt', ...}, DDP 'module.' prefix.
    # The target encoder (the EMA one) is the one I-JEPA evaluates: preferred.
    KeyScheme("ijepa-target_encoder", r"target_encoder\.(module\.)?"),
    KeyScheme("ijepa-encoder", r"encoder\.(module\.)?"),
    # DINO-style {'teacher': {'backbone.*', 'head.*'}, 'student': ...}.
    KeyScheme("dino-teacher", r"teacher\.(module\.)?(backbone\.)?"),
    # MAE / DeiT / Lightning wrappers: {'model': sd} / {'state_dict': sd} (MAE decoder keys are ignored).
    KeyScheme("wrapped", r"(model|state_dict|module)\.(module\.)?(model\.)?"),
    # A plain timm state dict (optionally with a DDP prefix).
    KeyScheme("timm", r"(module\.)?"),
)

# Keys (timm names) that exist in encoder checkpoints but do not shape patch tokens: classifier heads, MAE decoders
# and mask tokens, pooled-feature norms; BEiT's index buffers (recomputed: models.vit.relative_position_index).
IGNORED = (r"head(\..*)?", r"head_drop\..*", r"fc_norm\..*", r"pre_logits\..*", r"decoder.*", r"mask_token",
           r"attn_pool\..*", r"dist_token", r"head_dist\..*", r"(blocks\.\d+\.attn\.|rel_pos_bias\.)?"
           r"relative_position_index", r"blocks\.\d+\.attn\.k_bias")
REL_TABLE = "blocks.{i}.attn.relative_position_bias_table"
SHARED_REL_TABLE = "rel_pos_bias.relative_position_bias_table"

# timm name -> our parameter path; {i} is a block index. layout: conv (OIHW <-> HWIO), linear (transpose), copy.
# pos_embed / cls_pos_embed are handled apart (split, sin-cos detection, resampling).
PARAM_TABLE: tuple[tuple[str, str, str], ...] = (
    ("patch_embed.proj.weight", "patch_embed/kernel", "conv"),
    ("patch_embed.proj.bias", "patch_embed/bias", "copy"),
    ("cls_token", "cls_token", "copy"),
    ("blocks.{i}.norm1.weight", "encoder/blocks_{i}/norm1/scale", "copy"),
    ("blocks.{i}.norm1.bias", "encoder/blocks_{i}/norm1/bias", "copy"),
    ("blocks.{i}.attn.qkv.weight", "encoder/blocks_{i}/attn/qkv/kernel", "linear"),
    ("blocks.{i}.attn.qkv.bias", "encoder/blocks_{i}/attn/qkv/bias", "copy"),
    ("blocks.{i}.attn.proj.weight", "encoder/blocks_{i}/attn/proj/kernel", "linear"),
    ("blocks.{i}.attn.proj.bias", "encoder/blocks_{i}/attn/proj/bias", "copy"),
    ("blocks.{i}.norm2.weight", "encoder/blocks_{i}/norm2/scale", "copy"),
    ("blocks.{i}.norm2.bias", "encoder/blocks_{i}/norm2/bias", "copy"),
    ("blocks.{i}.mlp.fc1.weight", "encoder/blocks_{i}/mlp/fc1/kernel", "linear"),
    ("blocks.{i}.mlp.fc1.bias", "encoder/blocks_{i}/mlp/fc1/bias", "copy"),
    ("blocks.{i}.mlp.fc2.weight", "encoder/blocks_{i}/mlp/fc2/kernel", "linear"),
    ("blocks.{i}.mlp.fc2.bias", "encoder/blocks_{i}/mlp/fc2/bias", "copy"),
    ("blocks.{i}.attn.relative_position_bias_table", "encoder/blocks_{i}/attn/relative_position_bias_table", "copy"),
    ("blocks.{i}.gamma_1", "encoder/blocks_{i}/gamma_1", "copy"),
    ("blocks.{i}.gamma_2", "encoder/blocks_{i}/gamma_2", "copy"),
    ("norm.weight", "encoder/norm/scale", "copy"),
    ("norm.bias", "encoder/norm/bias", "copy"),
)
# Missing from some checkpoints and exactly zero then (timm qkv_bias=False).
ZERO_IF_MISSING = (r"blocks\.\d+\.attn\.qkv\.bias",)
POS_KEYS = ("pos_embed", "cls_pos_embed")
SINCOS_ATOL = 1e-6
RESAMPLE_METHODS = ("bicubic", "bilinear")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the architecture: names the parameter, the expected and the found shapes."""


def _to_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\Z")


_OURS_TO_TIMM = [(_to_regex(ours), timm, layout) for timm, ours, layout in PARAM_TABLE]


def timm_name(our_path: str) -> tuple[str, str]:
    """``'encoder/blocks_3/attn/qkv/kernel'`` -> (``'blocks.3.attn.qkv.weight'``, ``'linear'``)."""
    for regex, timm, layout in _OURS_TO_TIMM:
        m = regex.match(our_path)
        if m:
            return timm.replace("{i}", m.groupdict().get("i") or ""), layout
    raise KeyError(f"No timm name for parameter {our_path!r}.")


def to_ours(arr: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return arr.transpose(2, 3, 1, 0)  # [out, in, h, w] -> [h, w, in, out]
    return arr.T if layout == "linear" else arr


def to_timm(arr: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return arr.transpose(3, 2, 0, 1)
    return arr.T if layout == "linear" else arr


def default_num_heads(width: int, depth: int) -> int:
    """Heads when nothing says: the ``VARIANTS`` entry with this width and depth, else ``width // 64``."""
    for w, d, _, heads in VARIANTS.values():
        if (w, d) == (width, depth):
            return heads
    return max(1, width // 64)


def flatten_params(params: Any, as_array: bool = True) -> dict[str, Any]:
    """``{'encoder': {'norm': {'scale': x}}}`` -> ``{'encoder/norm/scale': x}`` (``flax.traverse_util``)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: np.asarray(v) for k, v in flat.items()} if as_array else flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(flat, sep="/")


# ------------------------------------------------------------------------------------------------ import
def select_encoder(state: dict[str, np.ndarray]) -> tuple[KeyScheme, dict[str, np.ndarray]]:
    """The first scheme whose prefix holds ``patch_embed.proj.weight``, and its keys renamed to timm names."""
    for scheme in SCHEMES:
        prefix = re.compile(scheme.prefix)
        selected = {}
        for key, value in state.items():
            m = prefix.match(key)
            if m is None:
                continue
            name = key[m.end():]
            for pattern, repl in scheme.renames:
                name = re.sub(pattern, repl, name)
            selected[name] = value
        if "patch_embed.proj.weight" in selected:
            return scheme, selected
    sample = sorted(state)[:8]
    raise CheckpointMismatchError(
        f"No ViT encoder found: no key ends in 'patch_embed.proj.weight' under any known prefix "
        f"({[s.prefix for s in SCHEMES]}). First keys: {sample}. Add a KeyScheme to "
        f"usjepa_jax.encoders.convert.SCHEMES for a new naming scheme.")


def _beit_to_timm_names(sd: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray]:
    """BEiT's separate q/v biases, shared relative position table and timm-ViT layer-scale names, rewritten into
    the names ``PARAM_TABLE`` knows (exact: BEiT's k bias is zero)."""
    sd = dict(sd)
    merged = []
    for key in sorted(k for k in sd if k.endswith(".attn.q_bias")):
        block = key[: -len("q_bias")]
        v_key = block + "v_bias"
        if v_key not in sd or block + "qkv.bias" in sd:
            continue
        q, v = sd.pop(key), sd.pop(v_key)
        sd[block + "qkv.bias"] = np.concatenate([q, np.zeros_like(q), v])
        merged.append(block)
    if merged:
        notes.append(f"q_bias/v_bias of {len(merged)} blocks merged into qkv.bias (zero k bias, as BEiT)")
    for key in [k for k in sd if re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k)]:
        sd[key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")] = sd.pop(key)
    if SHARED_REL_TABLE in sd:
        shared = sd.pop(SHARED_REL_TABLE)
        blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
        for i in blocks:
            own = sd.get(REL_TABLE.format(i=i))
            sd[REL_TABLE.format(i=i)] = shared if own is None else own + shared
        notes.append("shared relative position bias table added to every block's")
    return sd


def _rel_grid(rows: int) -> tuple[int, int] | None:
    """The square patch grid of a BEiT relative position table of ``rows`` rows ((2g - 1)^2 + 3)."""
    side = math.isqrt(max(rows - 3, 0))
    return ((side + 1) // 2,) * 2 if side * side == rows - 3 and side % 2 == 1 else None


def _grid_of(length: int, image_grid: tuple[int, int] | None) -> tuple[int, int] | None:
    if image_grid is not None and image_grid[0] * image_grid[1] == length:
        return image_grid
    if length <= 0:
        return None
    side = math.isqrt(length)
    return (side, side) if side * side == length else None


def resample_posemb(pos: np.ndarray, src_grid: tuple[int, int], dst_grid: tuple[int, int],
                    method: str = "bicubic") -> np.ndarray:
    """``[N_src, D]`` position embeddings on ``src_grid`` -> ``[N_dst, D]`` on ``dst_grid`` (row-major)."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"Unknown resample method {method!r}: expected one of {RESAMPLE_METHODS}.")
    width = pos.shape[-1]
    grid = jnp.asarray(pos, jnp.float32).reshape(*src_grid, width)
    out = jax.image.resize(grid, (*dst_grid, width), method=method)
    return np.asarray(out).reshape(dst_grid[0] * dst_grid[1], width)


@dataclasses.dataclass
class Imported:
    """A converted checkpoint: ``VisionTransformer`` kwargs, flax params (numpy), and what was found."""

    vit: dict[str, Any]
    params: dict[str, Any]
    scheme: str
    image_size: tuple[int, int] | None  # the grid times the patch size the (learned) position embedding is for
    notes: list[str]
    ignored: list[str]


def from_state_dict(state: dict[str, np.ndarray], *, num_heads: int | None = None,
                    image_size: int | tuple[int, int] | None = None, src_image_size: int | None = None,
                    resample: str = "bicubic") -> Imported:
    """Convert a flat timm-named (or ``SCHEMES``-named) state dict to our parameters.

    ``image_size``: the resolution the teacher will see (learned position embeddings are resampled to its grid;
    None keeps the checkpoint's grid). ``src_image_size``: the checkpoint's resolution when its grid is not
    square. Raises ``CheckpointMismatchError`` naming the parameter and the expected and found shapes.
    """
    scheme, sd = select_encoder(state)
    notes: list[str] = []
    sd = _beit_to_timm_names(sd, notes)
    pe = sd["patch_embed.proj.weight"]
    if pe.ndim != 4 or pe.shape[2] != pe.shape[3]:
        raise CheckpointMismatchError(f"patch_embed.proj.weight: expected shape (width, in_channels, patch, patch), "
                                      f"found {tuple(pe.shape)}.")
    width, in_channels, patch = int(pe.shape[0]), int(pe.shape[1]), int(pe.shape[2])
    block_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    depth = len(block_ids)
    if block_ids != list(range(depth)):
        raise CheckpointMismatchError(f"blocks: expected blocks.0 ... blocks.{depth - 1}, found {block_ids}.")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if depth == 0 or fc1 is None:
        raise CheckpointMismatchError("blocks.0.mlp.fc1.weight: expected a (mlp_dim, width) tensor, found none "
                                      "(not a ViT encoder with timm-style blocks).")
    mlp_dim = int(fc1.shape[0])
    class_token = "cls_token" in sd
    rel_table = sd.get(REL_TABLE.format(i=0))
    layer_scale = "blocks.0.gamma_1" in sd
    final_norm = "norm.weight" in sd
    if rel_table is not None:
        if rel_table.ndim != 2 or _rel_grid(rel_table.shape[0]) is None:
            raise CheckpointMismatchError(f"{REL_TABLE.format(i=0)}: expected shape ((2g-1)^2 + 3, heads) for a "
                                          f"square g x g patch grid, found {tuple(rel_table.shape)}.")
        if num_heads is not None and num_heads != rel_table.shape[1]:
            raise CheckpointMismatchError(f"num_heads={num_heads} given, but {REL_TABLE.format(i=0)} "
                                          f"{tuple(rel_table.shape)} has {rel_table.shape[1]} heads.")
        num_heads = int(rel_table.shape[1])
    if not final_norm:
        notes.append("no final norm (the checkpoint's patch tokens are not normalised: mean-pooling head)")
    if num_heads is None:
        num_heads = default_num_heads(width, depth)
        notes.append(f"num_heads not given: default {num_heads} (cannot be inferred from weights)")
    if width % num_heads:
        raise CheckpointMismatchError(f"num_heads={num_heads} does not divide the width {width} found in "
                                      f"patch_embed.proj.weight {tuple(pe.shape)}.")

    # ---- position embeddings
    if "pos_embed" not in sd:
        if rel_table is None:
            raise CheckpointMismatchError("pos_embed: expected a (1, tokens, width) tensor, found none (a ViT "
                                          "without absolute position embeddings needs relative position bias "
                                          "tables, as BEiT).")
        return _from_relative_only(sd, scheme, notes, width, depth, mlp_dim, int(num_heads), patch, in_channels,
                                   class_token, layer_scale, final_norm, image_size)
    pos = np.asarray(sd["pos_embed"], np.float32)
    pos = pos.reshape(-1, pos.shape[-1])
    if pos.shape[-1] != width:
        raise CheckpointMismatchError(f"pos_embed: expected shape (1, tokens, {width}), found "
                                      f"{tuple(sd['pos_embed'].shape)}.")
    src_grid_hint = None
    if src_image_size is not None:
        s = (src_image_size, src_image_size) if isinstance(src_image_size, int) else tuple(src_image_size)
        src_grid_hint = (s[0] // patch, s[1] // patch)
    cls_pos, src_grid, n = None, None, len(pos)
    if src_grid_hint is not None and n in (src_grid_hint[0] * src_grid_hint[1] + class_token,
                                           src_grid_hint[0] * src_grid_hint[1]):
        src_grid = src_grid_hint
        has_cls_pos = class_token and n == src_grid[0] * src_grid[1] + 1
    else:
        has_cls_pos = class_token and _grid_of(n, None) is None and _grid_of(n - 1, None) is not None
        src_grid = _grid_of(n - 1 if has_cls_pos else n, None)
    if src_grid is None:
        raise CheckpointMismatchError(
            f"pos_embed: found {tuple(sd['pos_embed'].shape)}, which is not a square patch grid "
            f"{'(plus a class token) ' if class_token else ''}; give the checkpoint's image size.")
    if has_cls_pos:
        cls_pos, pos = pos[:1], pos[1:]
    is_sincos = (np.max(np.abs(pos - sincos_posemb_2d(src_grid, width)), initial=0.0) <= SINCOS_ATOL
                 if width % 4 == 0 else False)
    if cls_pos is not None and np.any(cls_pos != 0):
        is_sincos = False
    if image_size is None:
        dst_grid = src_grid
    else:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if size[0] % patch or size[1] % patch:
            raise CheckpointMismatchError(f"image size {size} is not divisible by the checkpoint's patch size "
                                          f"{patch} (patch_embed.proj.weight {tuple(pe.shape)}).")
        dst_grid = (size[0] // patch, size[1] // patch)

    if rel_table is not None and (_rel_grid(rel_table.shape[0]) != tuple(src_grid) or
                                  tuple(dst_grid) != tuple(src_grid)):
        raise CheckpointMismatchError(
            f"{REL_TABLE.format(i=0)} {tuple(rel_table.shape)} is for grid {_rel_grid(rel_table.shape[0])}, "
            f"pos_embed for {src_grid}, requested {dst_grid}: relative position tables are not resampled, use "
            f"the checkpoint at its own resolution.")
    vit = _vit_kwargs(width, depth, mlp_dim, int(num_heads), patch, "sincos2d" if is_sincos else "learn",
                      class_token, rel_table is not None, layer_scale, final_norm)
    flat: dict[str, np.ndarray] = {}
    if is_sincos:
        notes.append(f"pos_embed is the fixed 2-D sin-cos table of grid {src_grid}: loaded as posemb='sincos2d'")
    else:
        if tuple(src_grid) != tuple(dst_grid):
            notes.append(f"learned pos_embed resampled {src_grid} -> {dst_grid} ({resample})")
        flat["pos_embed"] = resample_posemb(pos, src_grid, dst_grid, resample)[None]
        if class_token:
            if cls_pos is None:
                notes.append("no class-token position in pos_embed (timm no_embed_class=True): zero cls_pos_embed")
            flat["cls_pos_embed"] = (np.zeros((1, width), np.float32) if cls_pos is None else cls_pos)[None]
    image = (src_grid[0] * patch, src_grid[1] * patch) if image_size is None else (dst_grid[0] * patch,
                                                                                   dst_grid[1] * patch)
    return _map_params(sd, scheme, notes, vit, in_channels, dst_grid, flat, {"pos_embed"}, image)


def _vit_kwargs(width: int, depth: int, mlp_dim: int, num_heads: int, patch: int, posemb: str, class_token: bool,
                rel_pos_bias: bool, layer_scale: bool, final_norm: bool) -> dict[str, Any]:
    """``VisionTransformer`` kwargs; the BEiT options only when used (so plain ViTs' model.json is unchanged)."""
    vit = {"width": width, "depth": depth, "mlp_dim": mlp_dim, "num_heads": num_heads, "patch_size": patch,
           "posemb": posemb, "class_token": class_token}
    if rel_pos_bias:
        vit["rel_pos_bias"] = True
    if layer_scale:
        vit["layer_scale"] = 1.0  # the initial value: irrelevant for loaded weights, nonzero to create them
    if not final_norm:
        vit["final_norm"] = False
    return vit


def _from_relative_only(sd, scheme, notes, width, depth, mlp_dim, num_heads, patch, in_channels, class_token,
                        layer_scale, final_norm, image_size) -> Imported:
    """No absolute position embedding: positions come from the relative tables alone (BEiT's default)."""
    grid = _rel_grid(sd[REL_TABLE.format(i=0)].shape[0])
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if (size[0] // patch, size[1] // patch) != grid:
            raise CheckpointMismatchError(
                f"{REL_TABLE.format(i=0)} {tuple(sd[REL_TABLE.format(i=0)].shape)} is for a {grid} patch grid "
                f"({grid[0] * patch} px at patch {patch}), requested image size {size}: relative position tables "
                f"are not resampled, use the checkpoint at its own resolution.")
    notes.append(f"no absolute position embedding: positions from relative position bias tables (grid {grid})")
    vit = _vit_kwargs(width, depth, mlp_dim, num_heads, patch, "none", class_token, True, layer_scale, final_norm)
    return _map_params(sd, scheme, notes, vit, in_channels, grid, {}, set(), (grid[0] * patch, grid[1] * patch))


def _map_params(sd: dict[str, np.ndarray], scheme: KeyScheme, notes: list[str], vit: dict[str, Any],
                in_channels: int, grid: tuple[int, int], flat: dict[str, np.ndarray], used: set[str],
                image: tuple[int, int]) -> Imported:
    """Every parameter the architecture expects, from ``sd`` (shapes checked); unknown leftovers refused."""
    width, depth, mlp_dim, patch = vit["width"], vit["depth"], vit["mlp_dim"], vit["patch_size"]
    module = VisionTransformer(**vit)
    dummy = jax.ShapeDtypeStruct((1, grid[0] * patch, grid[1] * patch, in_channels), jnp.float32)
    expected = {k: v.shape for k, v in flatten_params(jax.eval_shape(module.init, jax.random.key(0), dummy)
                                                      ["params"], as_array=False).items()}
    zero_filled = []
    for path, shape in expected.items():
        if path in POS_KEYS:
            continue
        name, layout = timm_name(path)
        if name not in sd:
            if any(re.fullmatch(p, name) for p in ZERO_IF_MISSING):
                flat[path] = np.zeros(shape, np.float32)
                zero_filled.append(name)
                continue
            raise CheckpointMismatchError(f"{name}: expected shape {to_timm(np.empty(shape), layout).shape}, "
                                          f"found none (missing from the checkpoint).")
        value = np.asarray(sd[name]).astype(np.float32)
        converted = to_ours(value, layout) if value.ndim == len(shape) else value
        if converted.shape != tuple(shape):
            raise CheckpointMismatchError(
                f"{name}: expected shape {to_timm(np.empty(shape), layout).shape}, found {tuple(value.shape)} "
                f"(architecture inferred: width {width}, depth {depth}, mlp_dim {mlp_dim}, patch {patch}, "
                f"in_channels {in_channels}).")
        flat[path] = converted
        used.add(name)
    for path in flat:
        if path in POS_KEYS and path not in expected:
            raise CheckpointMismatchError(f"{path}: not expected by the inferred architecture.")
    if zero_filled:
        notes.append(f"missing, set to zero (timm qkv_bias=False): {zero_filled[:3]}{' ...' * (len(zero_filled) > 3)}")
    ignore = [re.compile(p) for p in IGNORED + scheme.ignore]
    ignored, unknown = [], []
    for name in sorted(set(sd) - used):
        (ignored if any(p.fullmatch(name) for p in ignore) else unknown).append(name)
    if unknown:
        raise CheckpointMismatchError(
            f"Unsupported parameters in the checkpoint's encoder (scheme {scheme.name!r}), not understood: "
            f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''} ({len(unknown)} in all). Supported: timm ViT "
            f"and BEiT layouts (relative position bias, layer scale, q/v biases); not register tokens, qk-norm, "
            f"pre-norm, SwiGLU or other extra layers, which cannot be loaded exactly.")
    return Imported(dict(vit, in_channels=in_channels), unflatten_params(flat), scheme.name, image, notes, ignored)


# ------------------------------------------------------------------------------------------------ export
def to_timm_state_dict(module: VisionTransformer, params: Any, *, image_size: int | tuple[int, int] | None,
                       in_channels: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Our encoder -> (timm ``VisionTransformer`` state dict as float32 numpy, timm constructor kwargs).

    A sin-cos encoder is written with its table as ``pos_embed`` (timm then treats it as learned: same outputs
    at ``img_size``). With a class token, ``pos_embed`` carries the class position first (zeros when the
    encoder has none), so ``no_embed_class=False``; without one, ``class_token=False`` (and ``no_embed_class``
    is moot: timm's position table then covers the patches only).
    """
    beit = {k: v for k, v in (("rel_pos_bias", module.rel_pos_bias), ("layer_scale", module.layer_scale),
                              ("final_norm", not module.final_norm), ("posemb", module.posemb == "none")) if v}
    if beit:
        raise ValueError(f"Export to timm's VisionTransformer: this encoder uses BEiT-layout options {sorted(beit)}, "
                         f"which that class does not have (not supported).")
    flat = flatten_params(params)
    p = module.patch_size
    if "pos_embed" in flat:
        pos = flat["pos_embed"].reshape(-1, module.width)
        grid = _grid_of(len(pos), None if image_size is None else _pair(image_size, p))
        if grid is None:
            raise ValueError(f"pos_embed of {len(pos)} tokens is not a square grid; give the image size.")
        if image_size is not None and tuple(grid) != _pair(image_size, p):
            raise ValueError(f"image size {image_size} does not match the learned pos_embed grid {grid}.")
    else:
        if image_size is None:
            raise ValueError("A sin-cos encoder has no stored grid: give the image size to export it.")
        grid = _pair(image_size, p)
        pos = sincos_posemb_2d(grid, module.width)
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        if path in POS_KEYS:
            continue
        name, layout = timm_name(path)
        out[name] = np.ascontiguousarray(to_timm(np.asarray(value, np.float32), layout))
    if module.class_token:
        cls_pos = flat.get("cls_pos_embed", np.zeros((1, 1, module.width), np.float32)).reshape(1, module.width)
        pos = np.concatenate([cls_pos, pos], axis=0)
    out["pos_embed"] = np.ascontiguousarray(pos[None], np.float32)
    model_args = {"img_size": [grid[0] * p, grid[1] * p] if grid[0] != grid[1] else grid[0] * p, "patch_size": p,
                      "in_chans": in_channels, "num_classes": 0, "global_pool": "", "embed_dim": module.width,
                      "depth": module.depth, "num_heads": module.num_heads, "mlp_ratio": module.mlp_dim / module.width,
                      "qkv_bias": True, "class_token": module.class_token, "no_embed_class": False}
    return out, model_args


# timm's plain ViT entry points by (width, depth, heads, patch). Each sets only those four, which the exported
# model_args set too, so any of them builds the same model from the args; a table hit just names it right.
TIMM_ARCHITECTURES = {
    (192, 12, 3, 16): "vit_tiny_patch16_224",
    (384, 12, 6, 16): "vit_small_patch16_224",
    (384, 12, 6, 8): "vit_small_patch8_224",
    (768, 12, 12, 16): "vit_base_patch16_224",
    (768, 12, 12, 8): "vit_base_patch8_224",
    (1024, 24, 16, 16): "vit_large_patch16_224",
    (1024, 24, 16, 14): "vit_large_patch14_224",
    (1280, 32, 16, 14): "vit_huge_patch14_224",
}
TIMM_FALLBACK_ARCHITECTURE = "vit_base_patch16_224"


def timm_architecture(module: VisionTransformer) -> str:
    """A timm model name that ``timm.create_model`` resolves to ``VisionTransformer`` for this encoder's size."""
    key = (module.width, module.depth, module.num_heads, module.patch_size)
    return TIMM_ARCHITECTURES.get(key, TIMM_FALLBACK_ARCHITECTURE)


_TIMM_SIZES = {"tiny": "Ti", "small": "S", "medium": "M", "base": "B", "large": "L", "huge": "H"}


def heads_of_timm_name(architecture: str) -> int | None:
    """``'vit_base_patch16_224'`` / ``'beit_large_patch16_224'`` -> the heads of that size (None if unknown)."""
    m = re.match(r"(?:vit|deit|beit|beitv2)\w*?_(tiny|small|medium|base|large|huge)_patch\d+", architecture)
    return VARIANTS[_TIMM_SIZES[m.group(1)]][3] if m else None


def _pair(image_size: int | tuple[int, int], patch: int) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return (size[0] // patch, size[1] // patch)
