"""Train-step throughput, FLOPs (XLA's and useful) and MFU, one JSON line per case.

    python benchmarks/train_step.py                      # ViT-S/16 @224 batch 16, and the base config
    python benchmarks/train_step.py --cases=base --steps=10
    python benchmarks/train_step.py --compare-cache      # each case with the teacher forward and with cached
                                                         # targets (encoders/cache.py), and the speed-up ratio
    python benchmarks/train_step.py --breakdown          # + the step's pieces timed as separate jitted functions
    python benchmarks/train_step.py --profile            # + where the compiled step spends its time, by op kind
    python benchmarks/train_step.py --dtype=bfloat16     # bf16 compute, f32 master weights (+ its loss vs f32)

Every timed step gets a new batch from the mask sampler (so the per-batch padding buckets of masks.py vary as in
training); each distinct step shape is compiled and run once before timing, and the number of shapes is reported
(``compiled_shapes``, bounded by ``sampler.max_batch_shapes``).

FLOPs and MFU (MFU = FLOP/s over a matmul peak measured in the same process with a large float32 matmul on the
same devices, before and right after each case's timed steps, the larger of the two; ``peak_spread`` is the smaller
over the larger, well below 1 when the machine was not steady; so a ratio of two measurements on one machine):
- ``xla_gflops``: XLA's cost analysis of the compiled steps (padding included), mean over the timed batches (with
  ``optim.grad_accum_steps > 1``, of the same step compiled without the micro-batch loop: XLA counts a loop once;
  so with ``optim.micro_pad_buckets > 1`` it counts every micro-batch at the batch's length, more than runs);
- ``useful_gflops``: the same model on the valid tokens only, counted analytically from the mask sizes of the
  batch as the step runs it (:func:`batch_useful_flops`: after ``Trainer.place_batch``'s cut, so the patches
  ``truncate_to_batch_min`` drops do not count; :func:`useful_flops`: matmuls and attention; backward = 2x forward
  for the trained student and predictor, the frozen teacher forward only). ``mfu`` is the useful one (what
  docs/performance.md quotes), ``mfu_xla`` XLA's.
- ``analytic_vs_xla``: the analytic count at the padded shapes over XLA's count, a check of the formula
  (XLA also counts element-wise ops, so slightly below 1).
- with ``--profile``, ``mfu_matmul_bound``: the useful FLOPs over the wall time during which a matmul op ran
  (``profile_ms.matmul_wall``), times the peak: the MFU the step would reach if every other op took no time.
The step runs on synthetic batches already on device (the input pipeline is measured separately by
benchmarks/data_throughput.py) and with a random-init frozen teacher of the configured size.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import base  # noqa: E402
from usjepa_jax import config as config_lib  # noqa: E402
from usjepa_jax import objectives, optim, targets, train  # noqa: E402
from usjepa_jax.encoders import FrozenEncoder, normalize_images  # noqa: E402
from usjepa_jax.encoders.cache import KEY, TeacherCache  # noqa: E402


def matmul_peak_flops(size: int = 2048, repeats: int = 10, seconds: float = 2.0) -> float:
    """Achieved FLOP/s of a ``size``-square float32 matmul (the machine's practical peak): the best of at least
    ``repeats`` runs and ``seconds`` of them (on a shared VM a single second can catch a core taken away)."""
    x = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best, begin, runs = float("inf"), time.perf_counter(), 0
    while runs < repeats or time.perf_counter() - begin < seconds:
        start = time.perf_counter()
        f(x).block_until_ready()
        best, runs = min(best, time.perf_counter() - start), runs + 1
    return 2 * size**3 / best


def vit_s16_config():
    c = base.get_config()
    c.data.image_size = 224
    c.masks.min_keep = 10
    c.model = config_lib.model_config("S/16")
    c.teacher.model = config_lib.model_config("S/16")
    c.predictor = config_lib.predictor_config(width=192, depth=6, num_heads=6)
    c.optim.batch_size = 16
    c.optim.grad_accum_steps = 8  # 2 images a micro-batch, as measured at this size (docs/performance.md)
    return c


def peer_config():
    """The side-by-side case against the official I-JEPA step (the shared peer scripts): predictor 384 x 6, four
    target blocks at scale 0.075-0.125."""
    c = vit_s16_config()
    c.predictor = config_lib.predictor_config(width=384, depth=6, num_heads=6)
    c.masks.target_scale = (0.075, 0.125)
    return c


CASES = {"vit_s16_224": vit_s16_config, "peer": peer_config, "base": base.get_config}


def random_teacher(config) -> targets.FrozenTeacher:
    """A random-init frozen teacher of the configured size: it runs every step."""
    module = train.build_encoder(config.teacher.model)
    s = config.data.image_size
    params = jax.jit(module.init)(jax.random.key(1), jnp.zeros((1, s, s, 1)))["params"]
    return targets.FrozenTeacher(FrozenEncoder(module, params, 1, config.data.mean, config.data.std, "<random>",
                                               "random"), config.loss)


def cached_teacher(config) -> targets.CachedTeacher:
    """Stands in for a teacher cache of the configured teacher's size: the batches carry its targets."""
    module = train.build_encoder(config.teacher.model)
    grid = config.data.image_size // module.patch_size
    cache = TeacherCache("<benchmark>", "<random>", "random", module.width, grid * grid, module.patch_size, False)
    return targets.CachedTeacher(cache, config.loss)


def masked_batch(trainer: train.Trainer, rng: np.random.Generator) -> dict[str, np.ndarray]:
    config = trainer.config
    n, s = config.optim.batch_size, config.data.image_size
    samples = [trainer.sampler(rng) for _ in range(n)]
    batch = {k: np.stack([m[k] for m in samples]) for k in samples[0]}
    batch["image"] = rng.integers(0, 256, (n, s, s, 1), dtype=np.uint8)
    if isinstance(trainer.source, targets.CachedTeacher):  # what the pipeline attaches from the cache: bf16
        cache = trainer.source.cache
        batch[KEY] = rng.standard_normal((n, cache.tokens, cache.width), np.float32).astype(jnp.bfloat16)
    return batch


# ------------------------------------------------------------------------------------------------ FLOPs
def _transformer_flops(lengths: np.ndarray, width: int, depth: int, mlp_dim: int,
                       pairs: np.ndarray | None = None, outputs: np.ndarray | None = None,
                       output_pairs: np.ndarray | None = None) -> float:
    """Forward FLOPs of ``depth`` pre-norm blocks over sequences of the given lengths: the qkv, proj and MLP
    matmuls (``2 L (4 d^2 + 2 d m)``) and the two attention matmuls (``4 d`` per query-key pair: ``L^2`` pairs
    unless ``pairs`` says how many a sequence's attention mask allows). With ``outputs`` (tokens per sequence whose
    outputs are kept; ``output_pairs`` the pairs of their queries, ``outputs * L`` by default) the last block
    counts keys and values over all tokens and the rest over those tokens only, as it is computed
    (``Transformer(..., outputs=n)``)."""
    lengths = np.asarray(lengths, np.float64)
    pairs = lengths**2 if pairs is None else np.asarray(pairs, np.float64)
    layer = 2 * lengths * (4 * width**2 + 2 * width * mlp_dim) + 4 * pairs * width
    if outputs is None:
        return float(depth * layer.sum())
    outputs = np.asarray(outputs, np.float64)
    output_pairs = outputs * lengths if output_pairs is None else np.asarray(output_pairs, np.float64)
    last = 2 * lengths * 2 * width**2 + 2 * outputs * (2 * width**2 + 2 * width * mlp_dim) + 4 * output_pairs * width
    return float((depth - 1) * layer.sum() + last.sum())


def useful_flops(trainer: train.Trainer, context: np.ndarray, targets: np.ndarray, cached: bool) -> float:
    """FLOPs of one step counted on the given tokens: ``context [B]`` patches per context, ``targets [B, M]``
    patches per target block (the valid counts for the useful FLOPs, the padded lengths for the check).

    Student: patch embedding of every patch, blocks over its context. Predictor: the input projection per
    context token, blocks over ``context + block`` per (image, block) sequence (with ``predictor.shared_context``:
    over ``context + all blocks`` per image, attention on the pairs its mask allows: context-context and each block
    with the context and itself), the last block's queries, projection and MLP over the target tokens only (the
    only outputs kept), the output projection per target patch. Both trained: x3 (forward + backward).
    Frozen teacher (unless cached): one forward over all patches.
    """
    enc, pred, config = trainer.encoder, trainer.predictor, trainer.config
    n_patches = (config.data.image_size // enc.patch_size) ** 2
    batch = len(context)
    embed = 2.0 * n_patches * enc.patch_size**2 * enc.width * batch  # 1 input channel
    student = embed + _transformer_flops(context, enc.width, enc.depth, enc.mlp_dim)
    context, targets = np.asarray(context, np.float64), np.asarray(targets, np.float64)
    if pred.shared_context:
        target_pairs = (targets * (context[:, None] + targets)).sum(1)
        blocks = _transformer_flops(context + targets.sum(1), pred.width, pred.depth, pred.width * pred.mlp_ratio,
                                    pairs=context**2 + target_pairs, outputs=targets.sum(1),
                                    output_pairs=target_pairs)
    else:
        blocks = _transformer_flops((context[:, None] + targets).ravel(), pred.width, pred.depth,
                                    pred.width * pred.mlp_ratio, outputs=targets.ravel())
    predictor = (2.0 * context.sum() * enc.width * pred.width + blocks
                 + 2.0 * targets.sum() * pred.width * pred.out_dim)
    total = 3 * (student + predictor)
    if config.method == "usjepa" and not cached:
        t = trainer.config.teacher.model
        kw = config_lib.encoder_kwargs(t)
        total += embed / enc.width * kw["width"] + _transformer_flops(np.full(batch, n_patches), kw["width"],
                                                                       kw["depth"], kw["mlp_dim"])
    return total


def batch_useful_flops(trainer: train.Trainer, placed: dict, cached: bool) -> float:
    """:func:`useful_flops` of a batch as the step sees it (``Trainer.place_batch``): counted on the cut arrays,
    so that with ``masks.truncate_to_batch_min`` the patches the cut drops are not counted (the sampler's batch
    still holds them)."""
    return useful_flops(trainer, np.asarray(placed["context_valid"]).sum(-1),
                        np.asarray(placed["target_valid"]).sum(-1), cached)


# ------------------------------------------------------------------------------------------------ breakdown
def _best_time(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def step_breakdown(trainer: train.Trainer, state, batch: dict) -> dict[str, float]:
    """Milliseconds of the step's pieces, each its own jitted function on the same batch (they overlap less
    than inside the one compiled step, so the sum is an upper bound of the step)."""
    config, enc, pred = trainer.config, trainer.encoder, trainer.predictor
    params = state.params
    images = normalize_images(batch["image"], config.data.mean, config.data.std, enc.dtype)
    ci, cv, ti, tv = (batch[k] for k in ("context_idx", "context_valid", "target_idx", "target_valid"))

    def student(p, images):
        return enc.apply({"params": p}, images, ci, cv)[0]

    def predictor(p, ctx):
        return pred.apply({"params": p}, ctx, ci, cv, ti, tv)

    ctx = jax.jit(student)(params["encoder"], images)
    out = jax.jit(predictor)(params["predictor"], ctx)
    ms = {}
    source, frozen = trainer.source, trainer.frozen_params
    full_targets = jax.jit(source.targets)
    full = full_targets(state.targets, frozen, batch)
    if isinstance(source, targets.FrozenTeacher):
        ms["teacher_forward"] = _best_time(full_targets, state.targets, frozen, batch)
    ms["student_forward"] = _best_time(jax.jit(student), params["encoder"], images)
    ms["student_forward_backward"] = _best_time(
        jax.jit(lambda p, im, g: jax.vjp(student, p, im)[1](g)[0]), params["encoder"], images, ctx)
    ms["predictor_forward"] = _best_time(jax.jit(predictor), params["predictor"], ctx)
    ms["predictor_forward_backward"] = _best_time(
        jax.jit(lambda p, c, g: jax.vjp(predictor, p, c)[1](g)), params["predictor"], ctx, out)
    def loss(pred_out, full):
        return source.loss(pred_out, objectives.gather_patches(full, ti), tv)

    ms["loss_forward_backward"] = _best_time(jax.jit(jax.value_and_grad(loss)), out, full)
    tx = optim.make_optimizer(config.optim)
    grads = jax.tree.map(jnp.ones_like, params)
    ms["optimizer_update"] = _best_time(jax.jit(lambda g, s, p: tx.update(g, s, p)), grads, state.opt_state,
                                        params)
    return {k: round(v * 1e3, 1) for k, v in ms.items()}


# ------------------------------------------------------------------------------------------------ profile
OP_KINDS = ("matmul", "convolution", "gather/scatter", "transcendental", "reduce", "layout", "elementwise")


def op_kind(ops: collections.Counter) -> str:
    """The kind of a compiled op (a fusion, by the HLO instructions inside it): what bounds its speed."""
    if ops["dot"]:
        return "matmul"
    if ops["convolution"]:
        return "convolution"
    if ops["gather"] or ops["scatter"]:
        return "gather/scatter"
    if ops["exponential"] or ops["erf"] or ops["tanh"] or ops["log"]:
        return "transcendental"
    if ops["reduce"] or ops["reduce-window"]:
        return "reduce"
    if ops["transpose"] or ops["copy"] or ops["concatenate"] or ops["pad"] or ops["slice"]:
        return "layout"
    return "elementwise"


def hlo_op_kinds(hlo_text: str) -> dict[str, str]:
    """Compiled HLO text -> ``{op name: kind}`` for every top-level op of the entry and its called computations."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = bodies.setdefault(line.split(" ")[0].lstrip("%"), collections.Counter())
        elif current is not None and (m := re.search(r"= \S+ ([\w-]+)\(", line)):
            current[m.group(1)] += 1
    kinds = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = \S+ ([\w-]+)\(", line)
        if not m:
            continue
        called = re.search(r"calls=%?([\w.-]+)", line)
        ops = bodies.get(called.group(1), collections.Counter()) if called else collections.Counter([m.group(2)])
        kinds[m.group(1)] = op_kind(ops)
    return kinds


# (substring of jax's name stack, layer): the first that matches names the layer of an op.
LAYERS = (("/qkv", "qkv"), ("/attn/proj", "attention output"), ("/attn/", "attention"), ("/fc1", "mlp fc1"),
          ("/fc2", "mlp fc2"), ("/mlp/", "gelu"), ("norm", "layer norm"), ("patch_embed", "embedding"),
          ("predictor_embed", "embedding"), ("predictor_proj", "output"))


def op_part(op_name: str) -> str:
    """``model/layer/direction`` of an op from its HLO metadata ``op_name`` (jax's name stack): the model is the
    predictor, the student (differentiated: ``jvp(...)``) or the teacher (a ``VisionTransformer`` without
    gradient); ``attention`` is the part between the qkv and output projections (scores, softmax, weighted sum)."""
    model = ("predictor" if "Predictor" in op_name else "student" if "jvp(VisionTransformer)" in op_name
             else "teacher" if "VisionTransformer" in op_name else "rest")
    layer = next((name for key, name in LAYERS if key in op_name), "other")
    return f"{model}/{layer}/{'backward' if 'transpose(' in op_name else 'forward'}"


def hlo_op_parts(hlo_text: str) -> dict[str, str]:
    """Compiled HLO text -> ``{op name: op_part(its op_name)}`` for every op that carries metadata."""
    return {m.group(1): op_part(m.group(2))
            for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.-]+) = .*?op_name=\"([^\"]+)\"", hlo_text, re.M)}


def step_profile(compiled, args, steps: int = 2) -> dict[str, float]:
    """Milliseconds per step by op kind (``OP_KINDS``), from a jax profiler trace of ``steps`` runs of the compiled
    step: the ops' own durations (ops that run side by side both count), with ``step_ms`` the wall time for scale.
    The trace names each op as the compiled HLO does, and ``hlo_op_kinds`` sorts them; ``parts`` (``hlo_op_parts``)
    sums the same durations by model, layer and direction, largest first."""
    kinds, parts = hlo_op_kinds(compiled.as_text()), hlo_op_parts(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        start = time.perf_counter()
        for _ in range(steps):
            args = (compiled(*args)[0],) + args[1:]  # the state is donated: carry it on
            jax.block_until_ready(args[0])
        wall = (time.perf_counter() - start) / steps
        jax.profiler.stop_trace()
        trace = next(Path(trace_dir).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))["traceEvents"]
    totals, by_part, matmul_spans = collections.Counter(), collections.Counter(), []
    for event in events:
        if event.get("ph") == "X" and event.get("name") in kinds:
            totals[kinds[event["name"]]] += event["dur"] / 1e3 / steps
            by_part[parts.get(event["name"], "rest/other/forward")] += event["dur"] / 1e3 / steps
            if kinds[event["name"]] == "matmul":
                matmul_spans.append((event["ts"], event["ts"] + event["dur"]))
    return dict(step_ms=round(wall * 1e3, 1), **{k: round(totals[k], 1) for k in OP_KINDS},
                matmul_wall=round(covered_time(matmul_spans) / 1e3 / steps, 1),
                parts={k: round(v, 1) for k, v in by_part.most_common()})


def covered_time(spans: list[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals: wall time during which at least one of them ran."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


# ------------------------------------------------------------------------------------------------ a case
def _parse_like(current, value: str, key: str):
    """``--set`` value as the type of the key's current value (``bool('False')`` would be True)."""
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {key}={value}: expected True or False.")
        return value.lower() in ("true", "1")
    return type(current)(value)


def run_case(name: str, steps: int, peak: float, cached: bool = False, dtype: str | None = None,
             breakdown: bool = False, profile: bool = False, overrides: dict | None = None) -> dict:
    config = CASES[name]()
    if dtype:
        config.model.dtype = dtype
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = _parse_like(node[leaf], value, key)
    config_lib.validate(config)
    source = None  # ijepa / pixel: from the config
    if config.method == "usjepa":
        source = cached_teacher(config) if cached else random_teacher(config)
    trainer = train.build_trainer(config, source)
    rng = np.random.default_rng(0)
    host_batches = [masked_batch(trainer, rng) for _ in range(steps)]
    batches = [trainer.place_batch(b) for b in host_batches]
    state = trainer.init(jax.random.key(0))

    # One compilation per distinct shape, outside the timing (what the training loop's jit cache does).
    compiled, compile_s = {}, 0.0
    for b in batches:
        shape = (b["context_idx"].shape[1], b["target_idx"].shape[2])
        if shape not in compiled:
            start = time.perf_counter()
            compiled[shape] = trainer.step.lower(state, trainer.frozen_params, b).compile()
            compile_s += time.perf_counter() - start
    one_per_shape = {(b["context_idx"].shape[1], b["target_idx"].shape[2]): b for b in batches}
    flops_of = {shape: train.xla_flops(c) for shape, c in compiled.items()}
    if config.optim.grad_accum_steps > 1:  # XLA counts a loop body once: count the same step without the loop
        flops_of = {shape: train.step_flops(config, trainer.source, b) for shape, b in one_per_shape.items()}
    # Warm up every compiled program, not only the first: a program's first run is slower than its later ones,
    # and with truncate_to_batch_min nearly every batch has a shape of its own, so without this most timed steps
    # would be first runs, which a training run, reusing each shape's program, almost never makes.
    for shape, b in one_per_shape.items():
        state, metrics = compiled[shape](state, trainer.frozen_params, b)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for b in batches:
        state, metrics = compiled[(b["context_idx"].shape[1], b["target_idx"].shape[2])](
            state, trainer.frozen_params, b)
    jax.block_until_ready((state, metrics))
    step_time = (time.perf_counter() - start) / steps
    # The peak again right after the timed steps: the larger of the two is the denominator, their ratio says how
    # steady the machine was.
    peak_after = matmul_peak_flops()
    peak_spread, peak = min(peak, peak_after) / max(peak, peak_after), max(peak, peak_after)

    shapes = [(b["context_idx"].shape[1], b["target_idx"].shape[2]) for b in batches]
    xla = float(np.mean([flops_of[s] for s in shapes]))
    useful = float(np.mean([batch_useful_flops(trainer, b, cached) for b in batches]))
    padded = float(np.mean([useful_flops(trainer, np.full(config.optim.batch_size, s[0]),
                                         np.full((config.optim.batch_size, trainer.sampler.num_targets), s[1]),
                                         cached) for s in shapes]))
    out = dict(case=name, cached_targets=cached, variant=config.model.variant, teacher=config.teacher.model.variant,
               dtype=config.model.dtype, attention=config.model.attention,
               image_size=config.data.image_size, batch=config.optim.batch_size, devices=jax.device_count(),
               backend=jax.default_backend(), step_time_ms=round(step_time * 1e3, 2),
               images_per_s=round(config.optim.batch_size / step_time, 2),
               compiled_shapes=len(compiled), max_shapes=trainer.sampler.max_batch_shapes,
               compile_s=round(compile_s, 1), context_lens=sorted({s[0] for s in shapes}),
               target_lens=sorted({s[1] for s in shapes}), context_bound=trainer.sampler.context_len,
               xla_gflops=round(xla / 1e9, 2), useful_gflops=round(useful / 1e9, 2),
               useful_fraction=round(useful / xla, 3), analytic_vs_xla=round(padded / xla, 3),
               peak_matmul_gflops=round(peak / 1e9, 1), peak_spread=round(peak_spread, 2),
               mfu=round(useful / step_time / peak, 3), mfu_xla=round(xla / step_time / peak, 3),
               loss=round(float(metrics["loss"]), 5))
    out["grad_accum_steps"] = config.optim.grad_accum_steps
    if breakdown:
        out["breakdown_ms"] = step_breakdown(trainer, state, batches[0])
    if profile:
        first = batches[0]
        out["profile_ms"] = step_profile(compiled[(first["context_idx"].shape[1], first["target_idx"].shape[2])],
                                         (state, trainer.frozen_params, first))
        # The useful MFU if every op other than the matmuls took no time: the matmul ops' own wall time (their
        # intervals' union, so that two running side by side count once) bounds the step from below.
        out["mfu_matmul_bound"] = round(useful / (out["profile_ms"]["matmul_wall"] / 1e3) / peak, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compare-cache", action="store_true",
                        help="run each case with the teacher forward and with cached targets; print the ratio")
    parser.add_argument("--breakdown", action="store_true", help="also time the step's pieces separately")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the compiled step: milliseconds per step by op kind")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every case, e.g. --set optim.grad_accum_steps=1 (repeatable)")
    parser.add_argument("--dtype", default=None, choices=config_lib.DTYPES,
                        help="compute dtype (default: the case's, float32)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    peak = matmul_peak_flops()
    for name in args.cases.split(","):
        with_teacher = run_case(name, args.steps, peak, dtype=args.dtype, breakdown=args.breakdown,
                                profile=args.profile, overrides=overrides)
        print(json.dumps(with_teacher), flush=True)
        if args.compare_cache:
            cached = run_case(name, args.steps, peak, cached=True, dtype=args.dtype, breakdown=args.breakdown,
                              profile=args.profile, overrides=overrides)
            print(json.dumps(cached), flush=True)
            print(json.dumps({"case": name, "cached_speedup": round(with_teacher["step_time_ms"]
                                                                    / cached["step_time_ms"], 2),
                              "xla_gflops_ratio": round(with_teacher["xla_gflops"] / cached["xla_gflops"], 2)}),
                  flush=True)


if __name__ == "__main__":
    main()
