"""Regenerate the golden timm fixture in ``tests/fixtures/`` (needs torch and timm; the tests do not).

    python scripts/make_timm_fixture.py [--out tests/fixtures]

Writes two tiny timm ``VisionTransformer``s with random weights (every tensor randomised, so that no layer is an
identity and a mapping error cannot hide), as safetensors state dicts, each with a sidecar JSON of the timm model
args and the input normalisation (the format ``python -m usjepa_jax.encoders export`` writes):

- ``vit_cls``: embed 32, depth 2, heads 2, patch 8, img 32, in_chans 3, class token, learned pos_embed (with the
  class position, timm's default ``no_embed_class=False``);
- ``vit_nocls``: the same without class token (``class_token=False, global_pool=''``).

``timm_outputs.npz`` holds a fixed uint8 grayscale batch ``images [2, 32, 32, 1]``, the float input timm saw
(``input [2, 32, 32, 3]`` NHWC: grayscale replicated to 3 channels, then ``(x / 255 - mean) / std``) and each
model's patch tokens ``forward_features(x)[:, num_prefix_tokens:]`` (``tokens_cls``, ``tokens_nocls``
``[2, 16, 32]``).

``beit/`` is a BEiT-layout ViT as a Hugging Face / timm folder (``config.json`` + ``model.safetensors``, what
``timm.create_model('local-dir:beit', pretrained=True)`` reads): timm's ``Beit`` with embed 32, depth 2, heads 2,
patch 8, img 32, one input channel, relative position bias tables per block, layer scale (``gamma_1/2``),
separate q/v biases, no absolute position embedding and mean pooling (so no final norm on the patch tokens,
USFM-like). ``beit_outputs.npz``: ``input [2, 32, 32, 1]`` (the same images, ``(x / 255 - 0.5) / 0.25``) and
its patch tokens ``tokens [2, 16, 32]``.

``export/`` goes the other way: a tiny encoder of ours (width 32, depth 2, heads 2, patch 8, one channel, class
token, learned posemb; random weights from a fixed numpy seed) exported by ``python -m usjepa_jax.encoders
export`` to a Hugging Face / timm folder, loaded by ``timm.create_model('local-dir:export', pretrained=True)``;
``export_outputs.npz``: its ``input [2, 32, 32, 1]`` and timm's patch tokens ``tokens [2, 16, 32]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import sys
import tempfile

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

MEAN = (0.5, 0.45, 0.4)
STD = (0.25, 0.2, 0.3)
BASE_ARGS = {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2,
             "mlp_ratio": 4.0, "qkv_bias": True, "num_classes": 0, "global_pool": ""}
VARIANTS = {"vit_cls": {"class_token": True}, "vit_nocls": {"class_token": False}}
BEIT_ARGS = {"img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2,
             "mlp_ratio": 4.0, "qkv_bias": True, "num_classes": 0, "global_pool": "avg", "use_abs_pos_emb": False,
             "use_rel_pos_bias": True, "use_shared_rel_pos_bias": False, "init_values": 0.1}
BEIT_MEAN, BEIT_STD = 0.5, 0.25


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma_1", "gamma_2")):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name in ("pos_embed", "cls_token"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.2 * noise)


def export_fixture(out: Path, x1: np.ndarray) -> None:
    """Our encoder -> our export -> timm's own loader -> tokens."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax

    from usjepa_jax.encoders import __main__ as cli
    from usjepa_jax.encoders import export_encoder
    from usjepa_jax.models.vit import VisionTransformer

    module = VisionTransformer(width=32, depth=2, mlp_dim=128, num_heads=2, patch_size=8, posemb="learn",
                               class_token=True)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 1), np.float32))
    rng = np.random.default_rng(7)
    params = jax.tree.map(lambda a: (0.2 * rng.normal(size=a.shape)).astype(np.float32), shapes["params"])
    with tempfile.TemporaryDirectory() as tmp:
        export_encoder(Path(tmp) / "encoder", module, params, mean=BEIT_MEAN, std=BEIT_STD, in_channels=1,
                       image_size=32)
        cli.export_timm(Path(tmp) / "encoder", out / "export")
    meta = json.loads((out / "export" / "config.json").read_text())
    meta["usjepa"]["encoder"] = "(a temporary folder of scripts/make_timm_fixture.py)"
    (out / "export" / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    model = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.from_numpy(x1).permute(0, 3, 1, 2).contiguous())
    np.savez(out / "export_outputs.npz", input=x1, tokens=feats[:, model.num_prefix_tokens:].numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 32, 32, 1), dtype=np.uint8)
    x = (np.repeat(images, 3, axis=-1).astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    x = x.astype(np.float32)
    arrays = {"images": images, "input": x}
    for seed, (name, extra) in enumerate(VARIANTS.items()):
        args = dict(BASE_ARGS, **extra)
        model = VisionTransformer(**args).eval()
        randomize(model, seed)
        with torch.no_grad():
            feats = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
        arrays[f"tokens_{name.split('_')[1]}"] = feats[:, model.num_prefix_tokens:].numpy()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
        sidecar = {"architecture": "vision_transformer", "model_args": args,
                   "pretrained_cfg": {"input_size": [3, 32, 32], "mean": list(MEAN), "std": list(STD)},
                   "generator": f"scripts/make_timm_fixture.py (timm {timm.__version__}, torch {torch.__version__})"}
        (out / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    np.savez(out / "timm_outputs.npz", **arrays)

    beit = timm.models.beit.Beit(**BEIT_ARGS).eval()
    randomize(beit, len(VARIANTS))
    x1 = ((images.astype(np.float32) / 255.0 - BEIT_MEAN) / BEIT_STD).astype(np.float32)
    with torch.no_grad():
        feats = beit.forward_features(torch.from_numpy(x1).permute(0, 3, 1, 2).contiguous())
    folder = out / "beit"
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in beit.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"architecture": "beit_base_patch16_224", "num_classes": 0, "num_features": BEIT_ARGS["embed_dim"],
              "global_pool": "avg", "model_args": BEIT_ARGS,
              "pretrained_cfg": {"input_size": [1, 32, 32], "mean": [BEIT_MEAN], "std": [BEIT_STD],
                                 "interpolation": "bicubic", "crop_pct": 1.0, "num_classes": 0},
              "generator": f"scripts/make_timm_fixture.py (timm {timm.__version__}, torch {torch.__version__})"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    np.savez(out / "beit_outputs.npz", input=x1, tokens=feats[:, beit.num_prefix_tokens:].numpy())
    export_fixture(out, x1)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
