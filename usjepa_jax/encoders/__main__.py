"""Encoder command line: convert a ViT checkpoint once, export ours to timm, inspect either, cache a teacher's
targets.

    python -m usjepa_jax.encoders convert --input vit_b16.safetensors --output teachers/urfm \\
        [--format auto] [--num-heads 12] [--image-size 224] [--mean 0.5 0.5 0.5 --std 0.5 0.5 0.5]
    python -m usjepa_jax.encoders export --workdir runs/usjepa --output usjepa_vit [--which encoder]   # HF folder
    python -m usjepa_jax.encoders export --workdir runs/usjepa --output usjepa_vit.safetensors      # one file
    python -m usjepa_jax.encoders inspect PATH
    python -m usjepa_jax.encoders cache --config=configs/base.py --output caches/base \\
        [--teacher RUN/teacher/encoder] [--split train,val] [--batch-size 64] [--normalize] [--config.KEY=VALUE]

``convert`` writes an exported-encoder directory (``model.json`` + ``params/``) usable as
``config.teacher.checkpoint`` and prints what it found. ``export`` writes ``RUN/encoder`` (``--which encoder``)
or ``RUN/teacher/encoder`` (``--which teacher``, the stage-1 pixel teacher) as a timm ``VisionTransformer``:
to a folder, the Hugging Face / timm layout (``config.json`` with timm's architecture name, ``model_args`` and
``pretrained_cfg`` including the input normalisation, + ``model.safetensors``), loaded in PyTorch by timm's own
path and back here by ``load_encoder(folder)``::

    model = timm.create_model('local-dir:usjepa_vit', pretrained=True)
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]

or to ``FILE.safetensors`` with the same JSON as ``FILE.json`` next to it::

    cfg = json.load(open('usjepa_vit.json'))
    model = timm.models.vision_transformer.VisionTransformer(**cfg['model_args'])
    model.load_state_dict(safetensors.torch.load_file('usjepa_vit.safetensors'))
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]

``cache`` runs the frozen teacher (``--teacher``, default ``config.teacher.checkpoint``) once over every image
of the split(s) as the pipeline produces them (no augmentation, no masks) and writes the patch embeddings in
bfloat16 ArrayRecord shards + ``cache.json`` (see ``usjepa_jax/encoders/cache.py``); train with
``--config.teacher.cache=DIR`` and the teacher never runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_jax import storage
from usjepa_jax.encoders import (
    IMAGENET_MEAN,
    export_encoder,
    formats,
    is_exported_encoder,
    params_hash,
    read_encoder,
    read_exported_encoder,
)
from usjepa_jax.encoders import convert as convert_lib
from usjepa_jax.layout import ENCODER_DIR, TEACHER_DIR


def _stat_arg(values: list[float] | None) -> Any:
    if values is None:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def describe(enc: Any, content_hash: str) -> str:
    vit = enc.vit
    n = sum(int(np.asarray(x).size) for x in convert_lib.flatten_params(enc.params).values())
    lines = [
        f"source:        {enc.path} ({', '.join(f'{k}={v}' for k, v in enc.source.items() if k != 'notes' and v)})",
        (f"architecture:  ViT width {vit['width']}, depth {vit['depth']}, heads {vit['num_heads']}, "
        f"mlp {vit['mlp_dim']}, patch {vit['patch_size']}, posemb {vit['posemb']}, "
        f"class_token {vit['class_token']}"),
        f"input:         {enc.in_channels} channel(s), image size {enc.image_size}, mean {enc.mean}, std {enc.std}",
        f"parameters:    {n:,}",
        f"content hash:  {content_hash}",
    ]
    lines += [f"note:          {note}" for note in enc.source.get("notes", [])]
    return "\n".join(lines)


def cmd_convert(args: argparse.Namespace) -> None:
    enc = read_encoder(args.input, image_size=args.image_size, num_heads=args.num_heads,
                       mean=_stat_arg(args.mean), std=_stat_arg(args.std), fmt=args.format, resample=args.resample)
    module = convert_lib.VisionTransformer(**enc.vit)
    source = {k: v for k, v in enc.source.items() if v}
    content_hash = export_encoder(args.output, module, enc.params, mean=enc.mean, std=enc.std,
                                  in_channels=enc.in_channels, image_size=enc.image_size, source=source)
    print(describe(enc, content_hash))
    print(f"wrote:         {storage.absolute(args.output)} (use as config.teacher.checkpoint)")


def _encoder_dir(workdir: Path, which: str) -> Path:
    if is_exported_encoder(workdir):
        return workdir
    directory = workdir / ENCODER_DIR if which == "encoder" else workdir / TEACHER_DIR / ENCODER_DIR
    if not is_exported_encoder(directory):
        raise SystemExit(f"error: {directory} is not an exported encoder (model.json + params/); "
                         f"--which {which} expects it in {workdir}.")
    return directory


def export_timm(encoder_dir: str | Path, output: str | Path, image_size: int | None = None) -> dict[str, Any]:
    """Write an exported encoder for timm; returns its ``config.json`` content.

    ``output`` a directory (no ``.safetensors`` suffix): a Hugging Face / timm folder, ``config.json`` (timm's
    ``architecture``, ``model_args``, ``pretrained_cfg`` with the input size and normalisation) +
    ``model.safetensors``, which ``timm.create_model('local-dir:OUTPUT', pretrained=True)`` loads and
    ``load_encoder(OUTPUT)`` imports back. ``output`` a ``FILE.safetensors``: the state dict there and the same
    JSON as ``FILE.json`` next to it.
    """
    spec, params = read_exported_encoder(encoder_dir)
    vit = spec["vit"]
    module = convert_lib.VisionTransformer(**vit)
    size = image_size or spec.get("image_size")
    if size is None and vit["posemb"] == "sincos2d":
        raise SystemExit(f"error: {encoder_dir} uses sin-cos position embeddings and its model.json records no "
                         f"image_size: pass --image-size (the resolution it was trained at).")
    size = tuple(size) if isinstance(size, list) else size
    in_channels = spec.get("in_channels", 1)
    state, model_args = convert_lib.to_timm_state_dict(module, params, image_size=size, in_channels=in_channels)
    output = storage.path(output)
    folder = output.suffix != ".safetensors"
    weights, config_file = ((output / "model.safetensors", output / "config.json") if folder
                            else (output, output.with_suffix(".json")))
    weights.parent.mkdir(parents=True, exist_ok=True)
    formats.write_safetensors(weights, state, metadata={"format": "pt", "usjepa_content_hash": spec["content_hash"]})

    def per_channel(value: Any) -> list[float]:
        return list(value) if isinstance(value, list | tuple) else [float(value)] * in_channels

    img = model_args["img_size"]
    meta = {"architecture": convert_lib.timm_architecture(module), "num_classes": 0, "num_features": vit["width"],
            "global_pool": model_args["global_pool"], "model_args": model_args,
            "pretrained_cfg": {"input_size": [in_channels, *(img if isinstance(img, list) else [img, img])],
                               "mean": per_channel(spec["mean"]), "std": per_channel(spec["std"]),
                               "interpolation": "bicubic", "crop_pct": 1.0, "num_classes": 0},
            "usjepa": {"encoder": str(storage.absolute(encoder_dir)), "content_hash": spec["content_hash"],
                       "state_dict_hash": params_hash(state),
                       "output": "forward_features(x)[:, model.num_prefix_tokens:] are the patch tokens"}}
    config_file.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def cmd_export(args: argparse.Namespace) -> None:
    directory = _encoder_dir(storage.path(args.workdir), args.which)
    meta = export_timm(directory, args.output, args.image_size)
    print(f"exported:      {directory}")
    print(f"timm args:     {json.dumps(meta['model_args'])}")
    out = storage.absolute(args.output)
    written = (f"{out / 'config.json'} + model.safetensors (load: timm.create_model('local-dir:{out}', "
               f"pretrained=True))" if out.suffix != ".safetensors" else f"{out} and {out.with_suffix('.json')}")
    print(f"architecture:  {meta['architecture']}")
    print(f"wrote:         {written}")


def cmd_inspect(args: argparse.Namespace) -> None:
    enc = read_encoder(args.path, num_heads=args.num_heads, fmt=args.format)
    print(describe(enc, params_hash(enc.params)))


def load_config(spec: str, overrides: list[str]) -> Any:
    """``configs/x.py[:arg]`` plus ``--config.key=value`` overrides, parsed as ``usjepa_jax.main`` parses them."""
    from absl import flags
    from ml_collections import config_flags

    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        raise SystemExit(f"error: unrecognized arguments: {' '.join(bad)}")
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True)
    try:
        fv(["cache", f"--config={spec}", *overrides])
    except flags.Error as err:
        raise SystemExit(f"error: {err}") from None
    flags.FLAGS.mark_as_parsed()  # grain's multiprocess prefetch (data.worker_count > 0) reads absl flags
    return fv.config


def cmd_cache(args: argparse.Namespace, overrides: list[str]) -> None:
    from usjepa_jax.encoders import cache

    config = load_config(args.config, overrides)
    if config.data.augment.enabled:
        print("note:          data.augment.enabled=True is ignored here: the cache holds the un-augmented images' "
              "targets (training from it requires augmentation off)", file=sys.stderr)
    manifest = cache.write_cache(config, args.output, teacher_path=args.teacher, splits=args.split.split(","),
                                 batch_size=args.batch_size, normalize=args.normalize,
                                 images_per_shard=args.images_per_shard)
    sizes = ", ".join(f"{k} {v['num_images']}" for k, v in manifest["splits"].items())
    print(f"teacher:       {manifest['teacher']['path']} (hash {manifest['teacher']['content_hash'][:12]})")
    print(f"targets:       {manifest['tokens']} tokens x {manifest['width']} ({manifest['dtype']}, "
          f"{'layer-normalised' if manifest['normalized'] else 'raw'}), images: {sizes}")
    print(f"wrote:         {Path(args.output).absolute()} (use as config.teacher.cache)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m usjepa_jax.encoders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a checkpoint to an exported encoder directory")
    c.add_argument("--input", required=True, help=".safetensors/.npz/.pth file, exported encoder or HF directory")
    c.add_argument("--output", required=True, help="exported encoder directory to write")
    c.add_argument("--format", default="auto", choices=formats.FORMATS)
    c.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (not in the weights; default: sidecar JSON, else the VARIANTS entry of "
                        "the same width/depth, else width // 64)")
    c.add_argument("--image-size", type=int, default=None,
                   help="resolution the teacher will see; learned pos_embed is resampled to its grid")
    c.add_argument("--resample", default="bicubic", choices=convert_lib.RESAMPLE_METHODS)
    c.add_argument("--mean", type=float, nargs="+", default=None,
                   help=f"input mean, one or per channel (default: sidecar JSON, else ImageNet {IMAGENET_MEAN})")
    c.add_argument("--std", type=float, nargs="+", default=None, help="input std, one or per channel")
    c.set_defaults(func=cmd_convert)
    e = sub.add_parser("export", help="write a run's encoder as a timm state dict (safetensors) + JSON args")
    e.add_argument("--workdir", required=True, help="training run directory (or an exported encoder directory)")
    e.add_argument("--output", required=True, help="a folder (Hugging Face / timm: config.json + model.safetensors) "
                   "or FILE.safetensors (FILE.json is written next to it)")
    e.add_argument("--which", default="encoder", choices=("encoder", "teacher"),
                   help="encoder: RUN/encoder; teacher: RUN/teacher/encoder (the stage-1 pixel teacher)")
    e.add_argument("--image-size", type=int, default=None,
                   help="needed for sin-cos encoders whose model.json records no image_size")
    e.set_defaults(func=cmd_export)
    i = sub.add_parser("inspect", help="print what a checkpoint holds")
    i.add_argument("path")
    i.add_argument("--format", default="auto", choices=formats.FORMATS)
    i.add_argument("--num-heads", type=int, default=None)
    i.set_defaults(func=cmd_inspect)
    k = sub.add_parser("cache", help="precompute the frozen teacher's targets of a dataset split",
                       description="Also takes --config.KEY=VALUE overrides, as usjepa_jax.main does.")
    k.add_argument("--config", required=True, help="experiment config, configs/NAME.py[:arg]")
    k.add_argument("--output", required=True, help="cache directory to write (use as config.teacher.cache)")
    k.add_argument("--teacher", default=None, help="teacher checkpoint (default: config.teacher.checkpoint)")
    k.add_argument("--split", default="train,val",
                   help="comma-separated splits (val is needed for the validation loss when eval_every > 0)")
    k.add_argument("--batch-size", type=int, default=64, help="images per teacher forward")
    k.add_argument("--normalize", action="store_true",
                   help="store layer-normalised targets (as the loss uses them) instead of raw embeddings")
    k.add_argument("--images-per-shard", type=int, default=4096)
    k.set_defaults(func=cmd_cache)
    args, extra = parser.parse_known_args(argv)
    if args.command != "cache":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion is host work (the cache uses accelerators)
    try:
        args.func(args, extra) if args.command == "cache" else args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
