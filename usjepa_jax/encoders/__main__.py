"""Encoder command line: convert a ViT checkpoint once, export ours to timm, inspect either, cache a teacher's
targets.

    python -m usjepa_jax.encoders convert --input vit_b16.safetensors --output teachers/urfm \\
        [--format auto] [--num-heads 12] [--image-size 224] [--mean 0.5,0.5,0.5 --std 0.5,0.5,0.5]
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

Each command's flags (absl, as ``main`` and ``evaluate``) live in their own ``FlagValues``, so a command parses only
its own flags and importing this module defines nothing in ``absl.flags.FLAGS``; ``cache`` takes ``--config`` and
its ``--config.KEY=VALUE`` overrides as ``usjepa_jax.main`` does.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags
from ml_collections import config_flags

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
from usjepa_jax.encoders import cache
from usjepa_jax.encoders import convert as convert_lib
from usjepa_jax.layout import ENCODER_DIR, TEACHER_DIR


PROG = "python -m usjepa_jax.encoders"


def _stat_arg(values: list[str] | None) -> Any:
    """``--mean 0.5`` or ``--mean 0.485,0.456,0.406``: a scalar or a per-channel tuple."""
    if values is None:
        return None
    values = [float(v) for v in values]
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


def cmd_convert(args: flags.FlagValues) -> None:
    enc = read_encoder(args.input, image_size=args["image-size"].value, num_heads=args["num-heads"].value,
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


def cmd_export(args: flags.FlagValues) -> None:
    directory = _encoder_dir(storage.path(args.workdir), args.which)
    meta = export_timm(directory, args.output, args["image-size"].value)
    print(f"exported:      {directory}")
    print(f"timm args:     {json.dumps(meta['model_args'])}")
    out = storage.absolute(args.output)
    written = (f"{out / 'config.json'} + model.safetensors (load: timm.create_model('local-dir:{out}', "
               f"pretrained=True))" if out.suffix != ".safetensors" else f"{out} and {out.with_suffix('.json')}")
    print(f"architecture:  {meta['architecture']}")
    print(f"wrote:         {written}")


def cmd_inspect(args: flags.FlagValues, path: str) -> None:
    enc = read_encoder(path, num_heads=args["num-heads"].value, fmt=args.format)
    print(describe(enc, params_hash(enc.params)))


def cmd_cache(args: flags.FlagValues) -> None:
    flags.FLAGS.mark_as_parsed()  # grain's multiprocess prefetch (data.worker_count > 0) reads absl flags
    config = args.config
    if config.data.augment.enabled:
        print("note:          data.augment.enabled=True is ignored here: the cache holds the un-augmented images' "
              "targets (training from it requires augmentation off)", file=sys.stderr)
    manifest = cache.write_cache(config, args.output, teacher_path=args.teacher, splits=args.split.split(","),
                                 batch_size=args["batch-size"].value, normalize=args.normalize,
                                 images_per_shard=args["images-per-shard"].value)
    sizes = ", ".join(f"{k} {v['num_images']}" for k, v in manifest["splits"].items())
    print(f"teacher:       {manifest['teacher']['path']} (hash {manifest['teacher']['content_hash'][:12]})")
    print(f"targets:       {manifest['tokens']} tokens x {manifest['width']} ({manifest['dtype']}, "
          f"{'layer-normalised' if manifest['normalized'] else 'raw'}), images: {sizes}")
    print(f"wrote:         {Path(args.output).absolute()} (use as config.teacher.cache)")


def _convert_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("input", None, ".safetensors/.npz/.pth file, exported encoder or HF directory",
                        required=True, flag_values=fv)
    flags.DEFINE_string("output", None, "exported encoder directory to write", required=True, flag_values=fv)
    flags.DEFINE_enum("format", "auto", formats.FORMATS, "checkpoint format", flag_values=fv)
    flags.DEFINE_integer("num-heads", None, "attention heads (not in the weights; default: sidecar JSON, else the "
                         "VARIANTS entry of the same width/depth, else width // 64)", flag_values=fv)
    flags.DEFINE_integer("image-size", None, "resolution the teacher will see; learned pos_embed is resampled to "
                         "its grid", flag_values=fv)
    flags.DEFINE_enum("resample", "bicubic", convert_lib.RESAMPLE_METHODS, "pos_embed resampling", flag_values=fv)
    flags.DEFINE_list("mean", None, f"input mean, one or per channel, comma separated (default: sidecar JSON, else "
                      f"ImageNet {IMAGENET_MEAN})", flag_values=fv)
    flags.DEFINE_list("std", None, "input std, one or per channel, comma separated", flag_values=fv)


def _export_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "training run directory (or an exported encoder directory)", required=True,
                        flag_values=fv)
    flags.DEFINE_string("output", None, "a folder (Hugging Face / timm: config.json + model.safetensors) or "
                        "FILE.safetensors (FILE.json is written next to it)", required=True, flag_values=fv)
    flags.DEFINE_enum("which", "encoder", ["encoder", "teacher"], "encoder: RUN/encoder; teacher: "
                      "RUN/teacher/encoder (the stage-1 pixel teacher)", flag_values=fv)
    flags.DEFINE_integer("image-size", None, "needed for sin-cos encoders whose model.json records no image_size",
                         flag_values=fv)


def _inspect_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("format", "auto", formats.FORMATS, "checkpoint format", flag_values=fv)
    flags.DEFINE_integer("num-heads", None, "attention heads (default: as convert finds them)", flag_values=fv)


def _cache_flags(fv: flags.FlagValues) -> None:
    config_flags.DEFINE_config_file("config", None, "experiment config, configs/NAME.py[:arg] (and "
                                    "--config.KEY=VALUE overrides)", flag_values=fv, lock_config=True)
    flags.mark_flag_as_required("config", flag_values=fv)
    flags.DEFINE_string("output", None, "cache directory to write (use as config.teacher.cache)", required=True,
                        flag_values=fv)
    flags.DEFINE_string("teacher", None, "teacher checkpoint (default: config.teacher.checkpoint)", flag_values=fv)
    flags.DEFINE_string("split", "train,val", "comma-separated splits (val is needed for the validation loss when "
                        "eval_every > 0)", flag_values=fv)
    flags.DEFINE_integer("batch-size", 64, "images per teacher forward", flag_values=fv)
    flags.DEFINE_bool("normalize", False, "store layer-normalised targets (as the loss uses them) instead of raw "
                      "embeddings", flag_values=fv)
    flags.DEFINE_integer("images-per-shard", 4096, "images per ArrayRecord shard", flag_values=fv)


# command -> (what it does, its flags, what it runs, its positional arguments)
COMMANDS: dict[str, tuple[str, Callable, Callable, tuple[str, ...]]] = {
    "convert": ("convert a checkpoint to an exported encoder directory", _convert_flags, cmd_convert, ()),
    "export": ("write a run's encoder as a timm state dict (safetensors) + JSON args", _export_flags, cmd_export,
               ()),
    "inspect": ("print what a checkpoint holds", _inspect_flags, cmd_inspect, ("PATH",)),
    "cache": ("precompute the frozen teacher's targets of a dataset split", _cache_flags, cmd_cache, ()),
}


def _usage() -> str:
    return f"usage: {PROG} {{{','.join(COMMANDS)}}} [flags]\n\n" + "\n".join(
        f"  {name:8s} {help_}" for name, (help_, *_rest) in COMMANDS.items())


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] in ("--help", "-h"):
            print(f"{_usage()}\n\n{__doc__}")
            return
        print(_usage(), file=sys.stderr)
        _fail(f"the first argument is the command, one of {', '.join(COMMANDS)}")
    command, argv = argv[0], argv[1:]
    help_, define, run, positional = COMMANDS[command]
    fv = flags.FlagValues()
    define(fv)
    if "--help" in argv or "-h" in argv:
        print(f"usage: {PROG} {command} {' '.join(positional)} [flags]\n\n{help_}\n\n{fv.get_help()}")
        return
    try:
        rest = fv([f"{PROG} {command}", *argv])[1:]
    except flags.Error as err:  # an unknown or bad flag, a missing required one, a config file's error
        _fail(str(err).splitlines()[0])
    if len(rest) != len(positional):
        _fail(f"{command} takes {' '.join(positional) or 'no positional arguments'}, got {rest}")
    if command != "cache":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion is host work (the cache uses accelerators)
    try:
        run(fv, *rest)
    except (ValueError, FileNotFoundError, ImportError) as err:
        _fail(str(err))


if __name__ == "__main__":
    main()
