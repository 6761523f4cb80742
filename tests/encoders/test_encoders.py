"""Teachers from anywhere: the golden timm fixture, key schemes, formats, export round trips, refusals, CLI.

The default run needs neither torch nor timm: ``tests/fixtures`` holds a tiny random timm ViT (with and without
class token) as safetensors and timm's own patch tokens on a fixed batch, a BEiT-layout ViT as a Hugging Face /
timm folder with its tokens, and one of our encoders exported to such a folder with the tokens timm computed from
it (``scripts/make_timm_fixture.py``). Tests that need torch or timm skip without them.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_vit
from usjepa_jax.encoders import (
    FrozenEncoder,
    convert,
    export_encoder,
    formats,
    is_exported_encoder,
    load_encoder,
    normalize_images,
    params_hash,
)
from usjepa_jax.encoders import __main__ as cli
from usjepa_jax.models import vit
from usjepa_jax.models.vit import VisionTransformer

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOL = 1e-4  # float32 max abs error against timm
FIXTURE_MEAN, FIXTURE_STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "timm_outputs.npz") as f:
        return {k: f[k] for k in f.files}


def fixture_state(name: str) -> dict[str, np.ndarray]:
    return formats.read_safetensors(FIXTURES / f"{name}.safetensors")[0]


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def apply(module, params, x):
    return jax.jit(module.apply)({"params": params}, jnp.asarray(x))[0]


# ------------------------------------------------------------------------------------------------ golden fixture
@pytest.mark.parametrize("variant", ["cls", "nocls"])
def test_golden_timm_fixture(ref, variant):
    teacher = load_encoder(FIXTURES / f"vit_{variant}.safetensors")
    m = teacher.module
    assert (m.width, m.depth, m.num_heads, m.mlp_dim, m.patch_size, m.class_token, m.posemb) == (
        32, 2, 2, 128, 8, variant == "cls", "learn")
    assert teacher.in_channels == 3 and teacher.mean == FIXTURE_MEAN and teacher.std == FIXTURE_STD
    tokens = apply(m, teacher.params, ref["input"])
    assert tokens.shape == ref[f"tokens_{variant}"].shape == (2, 16, 32)
    assert max_err(tokens, ref[f"tokens_{variant}"]) <= TOL
    # The whole teacher path: uint8 grayscale -> replicated to 3 channels -> per-channel normalisation -> tokens.
    embedded = jax.jit(teacher.embed)(teacher.params, jnp.asarray(ref["images"]))
    assert max_err(embedded, ref[f"tokens_{variant}"]) <= TOL


def test_normalize_images_per_channel():
    img = jnp.full((1, 2, 2, 1), 51, jnp.uint8)
    out = normalize_images(img, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], [0.2, 0.0, -0.2], atol=1e-6)
    assert normalize_images(img, 0.2, 0.5).shape == (1, 2, 2, 1)


# ------------------------------------------------------------------------------------------------ formats
def test_safetensors_round_trip_dtypes(tmp_path):
    import ml_dtypes
    tensors = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "f16": np.ones((3,), np.float16) / 3,
               "bf16": np.array([1.5, -2.25], ml_dtypes.bfloat16), "i64": np.array([[1, -2**40]], np.int64),
               "scalar": np.array(3.0, np.float32)}
    formats.write_safetensors(tmp_path / "t.safetensors", tensors, {"format": "pt"})
    back, meta = formats.read_safetensors(tmp_path / "t.safetensors")
    assert meta == {"format": "pt"} and set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        formats.read_safetensors(tmp_path / "bad.safetensors")


def test_npz_load(tmp_path, ref):
    np.savez(tmp_path / "vit.npz", **fixture_state("vit_nocls"))
    teacher = load_encoder(tmp_path / "vit.npz", num_heads=2, mean=FIXTURE_MEAN, std=FIXTURE_STD)
    assert teacher.content_hash == load_encoder(FIXTURES / "vit_nocls.safetensors").content_hash
    assert max_err(jax.jit(teacher.embed)(teacher.params, jnp.asarray(ref["images"])), ref["tokens_nocls"]) <= TOL


def test_heads_and_normalisation_defaults(tmp_path):
    formats.write_safetensors(tmp_path / "bare.safetensors", fixture_state("vit_cls"))  # no sidecar JSON
    teacher = load_encoder(tmp_path / "bare.safetensors")
    assert teacher.module.num_heads == 1  # max(1, 32 // 64): heads are not in the weights
    assert teacher.mean == (0.485, 0.456, 0.406) and teacher.std == (0.229, 0.224, 0.225)
    assert load_encoder(tmp_path / "bare.safetensors", num_heads=2).module.num_heads == 2
    assert convert.default_num_heads(768, 12) == 12 and convert.default_num_heads(1280, 32) == 16
    assert convert.default_num_heads(384, 5) == 6
    with pytest.raises(ValueError, match="num_heads=3 does not divide the width 32"):
        load_encoder(tmp_path / "bare.safetensors", num_heads=3)


# ------------------------------------------------------------------------------------------------ schemes
def test_ijepa_checkpoint_prefers_target_encoder(ref):
    sd = fixture_state("vit_nocls")
    state = {f"encoder.module.{k}": v * 0.5 for k, v in sd.items()}
    state |= {f"target_encoder.module.{k}": v for k, v in sd.items()}
    state |= {"predictor.module.predictor_embed.weight": np.zeros((4, 32), np.float32), "epoch": np.array(3)}
    imported = convert.from_state_dict(state, num_heads=2)
    assert imported.scheme == "ijepa-target_encoder"
    assert params_hash(imported.params) == params_hash(convert.from_state_dict(sd, num_heads=2).params)
    context = {k: v for k, v in state.items() if not k.startswith("target_encoder")}
    assert convert.from_state_dict(context, num_heads=2).scheme == "ijepa-encoder"


def test_mae_checkpoint_ignores_decoder_and_sincos_is_recognised():
    module, params = random_vit(posemb="sincos2d", class_token=True)
    sd, _ = convert.to_timm_state_dict(module, params, image_size=32, in_channels=1)
    assert sd["pos_embed"].shape == (1, 17, 32) and not np.any(sd["pos_embed"][0, 0])  # MAE: zero class position
    state = {f"model.{k}": v for k, v in sd.items()}
    state |= {"model.mask_token": np.zeros((1, 1, 16), np.float32),
              "model.decoder_embed.weight": np.zeros((16, 32), np.float32),
              "model.decoder_blocks.0.norm1.weight": np.ones(16, np.float32),
              "model.decoder_pos_embed": np.zeros((1, 17, 16), np.float32), "model.head.weight": np.zeros((5, 32))}
    imported = convert.from_state_dict(state, num_heads=4)
    assert imported.scheme == "wrapped" and imported.vit["posemb"] == "sincos2d" and imported.vit["class_token"]
    assert len(imported.ignored) == 5
    assert params_hash(imported.params) == params_hash(params)


def test_unsupported_layers_are_refused():
    state = fixture_state("vit_cls") | {"blocks.0.attn.q_norm.weight": np.ones(16, np.float32),
                                        "reg_token": np.zeros((1, 4, 32), np.float32)}
    with pytest.raises(convert.CheckpointMismatchError,
                       match=r"not understood: \['blocks\.0\.attn\.q_norm\.weight', 'reg_token'\]"):
        convert.from_state_dict(state, num_heads=2)
    with pytest.raises(convert.CheckpointMismatchError, match="No ViT encoder found"):
        convert.from_state_dict({"backbone.conv1.weight": np.zeros((8, 3, 3, 3))})


def test_missing_qkv_bias_is_zero(ref):
    state = {k: v for k, v in fixture_state("vit_nocls").items() if not k.endswith("qkv.bias")}
    imported = convert.from_state_dict(state, num_heads=2)
    assert not np.any(imported.params["encoder"]["blocks_1"]["attn"]["qkv"]["bias"])
    assert any("qkv" in note for note in imported.notes)


@pytest.mark.parametrize("name,shape", [("blocks.1.mlp.fc1.weight", (64, 32)), ("blocks.0.attn.qkv.weight", (64, 32)),
                                        ("norm.bias", (31,))])
def test_mismatching_checkpoint_names_parameter_and_shapes(tmp_path, name, shape):
    state = fixture_state("vit_cls")
    expected = state[name].shape
    state[name] = np.zeros(shape, np.float32)
    formats.write_safetensors(tmp_path / "bad.safetensors", state)
    with pytest.raises(convert.CheckpointMismatchError) as err:
        load_encoder(tmp_path / "bad.safetensors", num_heads=2)
    message = str(err.value)
    assert name in message and f"expected shape {expected}" in message and f"found {shape}" in message


def test_missing_path_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder(tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------------------------ resampling
def test_learned_posemb_resampling(tmp_path, ref):
    same = load_encoder(FIXTURES / "vit_cls.safetensors", image_size=32)
    assert params_hash(same.params) == load_encoder(FIXTURES / "vit_cls.safetensors").content_hash
    big = load_encoder(FIXTURES / "vit_cls.safetensors", image_size=48)
    assert big.params["pos_embed"].shape == (1, 36, 32)
    np.testing.assert_array_equal(big.params["cls_pos_embed"], same.params["cls_pos_embed"])
    assert jax.jit(big.embed)(big.params, jnp.zeros((1, 48, 48, 1), jnp.uint8)).shape == (1, 36, 32)
    flat = np.ones((16, 3), np.float32) * np.arange(3)
    for method in convert.RESAMPLE_METHODS:  # a constant field stays constant
        np.testing.assert_allclose(convert.resample_posemb(flat, (4, 4), (6, 5), method), np.ones((30, 3)) *
                                   np.arange(3), atol=1e-5)
    # An exported encoder with a learned posemb is resampled the same way on load.
    module, params = random_vit(posemb="learn")
    export_encoder(tmp_path / "enc", module, params, mean=0.5, std=0.25, image_size=32)
    loaded = load_encoder(tmp_path / "enc", image_size=24)
    assert loaded.params["pos_embed"].shape == (1, 9, 32) and jax.jit(loaded.embed)(
        loaded.params, jnp.zeros((2, 24, 24, 1), jnp.uint8)).shape == (2, 9, 32)


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("posemb,class_token", [("sincos2d", False), ("learn", True), ("learn", False),
                                                ("sincos2d", True)])
def test_export_then_import_round_trips_exactly(tmp_path, posemb, class_token):
    module, params = random_vit(posemb=posemb, class_token=class_token)
    content_hash = export_encoder(tmp_path / "run" / "encoder", module, params, mean=0.3, std=0.2, image_size=32)
    cli.main(["export", "--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "vit.safetensors")])
    meta = json.loads((tmp_path / "vit.json").read_text())
    assert meta["model_args"] | {"img_size": 32, "class_token": class_token, "global_pool": "", "num_classes": 0,
                                 "num_heads": 4, "in_chans": 1} == meta["model_args"]
    teacher = load_encoder(tmp_path / "vit.safetensors")
    assert teacher.module == module and teacher.content_hash == content_hash
    assert teacher.in_channels == 1 and teacher.mean == 0.3 and teacher.std == 0.2
    for a, b in zip(jax.tree.leaves(teacher.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_timm_state_dict_round_trips_bit_exactly(tmp_path):
    for name in ("vit_cls", "vit_nocls"):
        cli.main(["convert", "--input", str(FIXTURES / f"{name}.safetensors"), "--output", str(tmp_path / name)])
        assert is_exported_encoder(tmp_path / name)
        cli.main(["export", "--workdir", str(tmp_path / name), "--output", str(tmp_path / f"{name}.safetensors")])
        original, back = fixture_state(name), formats.read_safetensors(tmp_path / f"{name}.safetensors")[0]
        assert set(original) == set(back)
        for k in original:
            np.testing.assert_array_equal(original[k], back[k], err_msg=k)
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        src = json.loads((FIXTURES / f"{name}.json").read_text())
        assert {k: meta["model_args"][k] for k in src["model_args"]} == src["model_args"]


def test_cli_convert_prints_and_stage1_teacher_export(tmp_path, capsys):
    cli.main(["convert", "--input", str(FIXTURES / "vit_cls.safetensors"), "--output", str(tmp_path / "t"),
              "--image-size", "48", "--mean", "0.5", "--std", "0.25"])
    out = capsys.readouterr().out
    assert "width 32, depth 2, heads 2" in out and "content hash" in out and "(4, 4) -> (6, 6)" in out
    teacher = load_encoder(tmp_path / "t")
    assert teacher.mean == 0.5 and teacher.params["pos_embed"].shape == (1, 36, 32)
    assert isinstance(teacher, FrozenEncoder)
    with pytest.raises(SystemExit, match="not an exported encoder"):
        cli.main(["export", "--workdir", str(tmp_path), "--output", str(tmp_path / "x.safetensors"),
                  "--which", "teacher"])
    module, params = random_vit()
    export_encoder(tmp_path / "run" / "teacher" / "encoder", module, params, mean=0.5, std=0.25)
    with pytest.raises(SystemExit, match="--image-size"):
        cli.main(["export", "--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "x.safetensors"),
                  "--which", "teacher"])
    cli.main(["export", "--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "x.safetensors"),
              "--which", "teacher", "--image-size", "32"])
    assert load_encoder(tmp_path / "x.safetensors").content_hash == params_hash(params)


# ------------------------------------------------------------------------------------------------ torch pickles
class _Payload:
    """Unpickling this object would create ``marker`` (the stand-in for arbitrary code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    state = {k: torch.from_numpy(v.copy()) for k, v in fixture_state("vit_nocls").items()}
    torch.save({"model": state, "extra": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="Refusing to load.*safetensors"):
        load_encoder(tmp_path / "evil.pth", num_heads=2)
    assert not marker.exists()
    # The payload is live: a full unpickle would have run it.
    proof = tmp_path / "proof"
    torch.save({"extra": _Payload(str(proof))}, tmp_path / "proof.pth")
    torch.load(tmp_path / "proof.pth", weights_only=False)
    assert proof.exists()
    with pytest.raises(ValueError, match="Refusing"):  # plain pickles (not torch zip archives) too
        (tmp_path / "evil2.pt").write_bytes(pickle.dumps({"x": _Payload(str(marker))}))
        load_encoder(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_pth_ijepa_checkpoint(tmp_path, ref):
    torch = pytest.importorskip("torch")
    sd = fixture_state("vit_nocls")
    checkpoint = {"target_encoder": {f"module.{k}": torch.from_numpy(v.copy()) for k, v in sd.items()},
                  "encoder": {f"module.{k}": torch.zeros(v.shape) for k, v in sd.items()},
                  "epoch": 10, "lr": 1e-3}
    torch.save(checkpoint, tmp_path / "ijepa.pth.tar")  # official I-JEPA name; zip content tells the format
    teacher = load_encoder(tmp_path / "ijepa.pth.tar", num_heads=2, mean=FIXTURE_MEAN, std=FIXTURE_STD)
    assert max_err(jax.jit(teacher.embed)(teacher.params, jnp.asarray(ref["images"])), ref["tokens_nocls"]) <= TOL
    bf16 = {f"module.{k}": torch.from_numpy(v.copy()).bfloat16() for k, v in sd.items()}
    torch.save(bf16, tmp_path / "bf16.pt")
    assert load_encoder(tmp_path / "bf16.pt", num_heads=2).params["encoder"]["norm"]["scale"].dtype == np.float32


# ------------------------------------------------------------------------------------------------ live timm
@pytest.mark.parametrize("kwargs", [
    {"class_token": True}, {"class_token": False}, {"class_token": True, "no_embed_class": True},
    {"qkv_bias": False, "in_chans": 1},
    {"img_size": 48, "patch_size": 16, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 2.0}])
def test_live_timm_equivalence(tmp_path, kwargs):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 0,
            "global_pool": ""}
    args |= kwargs
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(**args).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    imported = convert.from_state_dict(sd, num_heads=args["num_heads"])
    module = VisionTransformer(**{k: v for k, v in imported.vit.items() if k != "in_channels"})
    x = np.random.default_rng(0).normal(size=(2, args["img_size"], args["img_size"], args.get("in_chans", 3)))
    x = x.astype(np.float32)
    with torch.no_grad():
        expected = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2))[:, model.num_prefix_tokens:]
    ours = apply(module, imported.params, x)
    assert max_err(ours, expected.numpy()) <= TOL


@pytest.mark.parametrize("posemb,class_token", [("sincos2d", False), ("learn", True)])
def test_live_exported_encoder_runs_in_timm(tmp_path, posemb, class_token):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    module, params = random_vit(posemb=posemb, class_token=class_token)
    export_encoder(tmp_path / "encoder", module, params, mean=0.5, std=0.25, image_size=32)
    cli.main(["export", "--workdir", str(tmp_path / "encoder"), "--output", str(tmp_path / "vit.safetensors")])
    cfg = json.loads((tmp_path / "vit.json").read_text())
    model = timm.models.vision_transformer.VisionTransformer(**cfg["model_args"]).eval()
    model.load_state_dict(load_file(tmp_path / "vit.safetensors"))
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype(np.float32)
    with torch.no_grad():
        expected = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2))[:, model.num_prefix_tokens:]
    ours = apply(module, params, x)
    assert max_err(ours, expected.numpy()) <= TOL


# ------------------------------------------------------------------------------------------------ HF / timm folders
@pytest.fixture(scope="module")
def beit_ref():
    with np.load(FIXTURES / "beit_outputs.npz") as f:
        return {k: f[k] for k in f.files}


def test_beit_folder_golden_fixture(ref, beit_ref):
    """A BEiT-layout ViT (USFM-like) imports from its HF/timm folder and gives timm's tokens; usable frozen."""
    teacher = load_encoder(FIXTURES / "beit")
    m = teacher.module
    assert (m.posemb, m.class_token, m.rel_pos_bias, m.final_norm, m.num_heads) == ("none", True, True, False, 2)
    assert m.layer_scale and teacher.in_channels == 1 and (teacher.mean, teacher.std) == (0.5, 0.25)
    tokens = apply(m, teacher.params, beit_ref["input"])
    assert max_err(tokens, beit_ref["tokens"]) <= TOL
    embedded = jax.jit(teacher.embed)(teacher.params, jnp.asarray(ref["images"]))  # the teacher's own path
    assert max_err(embedded, beit_ref["tokens"]) <= TOL
    # the relative position biases also hold for a subset of the patches (same tokens as the full image here
    # only through attention, so check the bias path runs and keeps shapes)
    sub = m.apply({"params": teacher.params}, jnp.asarray(beit_ref["input"]), jnp.asarray([[0, 5, 15]] * 2))[0]
    assert sub.shape == (2, 3, 32)


def test_beit_variants_shared_table_and_refusals():
    state = formats.read_safetensors(FIXTURES / "beit" / "model.safetensors")[0]
    base = convert.from_state_dict(state)
    # one shared table + per-block remainders (BEiT's use_shared_rel_pos_bias, with both): the same biases
    shared = state["blocks.0.attn.relative_position_bias_table"]
    split = dict(state, **{"rel_pos_bias.relative_position_bias_table": shared},
                 **{f"blocks.{i}.attn.relative_position_bias_table":
                    state[f"blocks.{i}.attn.relative_position_bias_table"] - shared for i in range(2)})
    again = convert.from_state_dict(split)
    for i in range(2):
        np.testing.assert_allclose(again.params["encoder"][f"blocks_{i}"]["attn"]["relative_position_bias_table"],
                                   base.params["encoder"][f"blocks_{i}"]["attn"]["relative_position_bias_table"],
                                   atol=1e-6)
    with pytest.raises(convert.CheckpointMismatchError, match="not resampled"):
        convert.from_state_dict(state, image_size=64)
    with pytest.raises(convert.CheckpointMismatchError, match="has 2 heads"):
        convert.from_state_dict(state, num_heads=4)
    with pytest.raises(convert.CheckpointMismatchError, match=r"not understood: \['blocks\.1\.attn\.k_norm\.bias'\]"):
        convert.from_state_dict(state | {"blocks.1.attn.k_norm.bias": np.zeros(16, np.float32)})
    with pytest.raises(ValueError, match="BEiT-layout options"):
        convert.to_timm_state_dict(VisionTransformer(**{k: v for k, v in base.vit.items() if k != "in_channels"}),
                                   base.params, image_size=32, in_channels=1)


@pytest.mark.parametrize("posemb,class_token", [("sincos2d", False), ("learn", True)])
def test_hf_folder_export_then_import_round_trips_exactly(tmp_path, posemb, class_token):
    module, params = random_vit(posemb=posemb, class_token=class_token)
    export_encoder(tmp_path / "encoder", module, params, mean=0.5, std=0.25, image_size=32)
    cli.main(["export", "--workdir", str(tmp_path / "encoder"), "--output", str(tmp_path / "hf")])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architecture"] == convert.TIMM_FALLBACK_ARCHITECTURE  # resolves in timm (a 32-wide ViT)
    assert config["pretrained_cfg"] | {"input_size": [1, 32, 32], "mean": [0.5], "std": [0.25]} == \
        config["pretrained_cfg"]
    assert config["model_args"]["num_heads"] == 4 and (tmp_path / "hf" / "model.safetensors").is_file()
    back = load_encoder(tmp_path / "hf")
    assert (back.module.posemb, back.module.class_token, back.module.num_heads) == (posemb, class_token, 4)
    assert (back.mean, back.std, back.in_channels) == (0.5, 0.25, 1)
    ours, theirs = convert.flatten_params(params), convert.flatten_params(back.params)
    if not class_token:
        assert ours.keys() == theirs.keys()
    else:  # our zero-initialised cls_pos_embed travels as timm's class position
        assert ours.keys() == theirs.keys() or set(theirs) - set(ours) == {"cls_pos_embed"}
    for key, value in ours.items():
        np.testing.assert_array_equal(theirs[key], value, err_msg=key)  # bit-exact
    assert back.content_hash == params_hash(params)


def test_timm_names_resolve_for_our_variants():
    names = {convert.timm_architecture(VisionTransformer(**vit.parse_variant(v))) for v in
             ("Ti/16", "S/16", "S/8", "B/16", "B/8", "L/16", "H/14", "M/16", "mu/8")}
    assert names <= set(convert.TIMM_ARCHITECTURES.values()) | {convert.TIMM_FALLBACK_ARCHITECTURE}
    assert convert.timm_architecture(VisionTransformer(**vit.parse_variant("B/16"))) == "vit_base_patch16_224"
    assert convert.heads_of_timm_name("vit_large_patch16_224.augreg_in21k") == 16


def test_exported_folder_golden_fixture(tmp_path):
    """Our export, as timm's own loader read it (tokens stored by the fixture script): the folder imports back to
    timm's tokens, and exporting it again writes the very state dict and model args timm consumed."""
    with np.load(FIXTURES / "export_outputs.npz") as f:
        x, expected = f["input"], f["tokens"]
    encoder = load_encoder(FIXTURES / "export")
    assert max_err(apply(encoder.module, encoder.params, x), expected) <= TOL
    export_encoder(tmp_path / "encoder", encoder.module, encoder.params, mean=encoder.mean, std=encoder.std,
                   in_channels=1, image_size=32)
    meta = cli.export_timm(tmp_path / "encoder", tmp_path / "again")
    golden = json.loads((FIXTURES / "export" / "config.json").read_text())
    assert {k: v for k, v in meta.items() if k != "usjepa"} == {k: v for k, v in golden.items() if k != "usjepa"}
    written = formats.read_safetensors(tmp_path / "again" / "model.safetensors")[0]
    consumed = formats.read_safetensors(FIXTURES / "export" / "model.safetensors")[0]
    assert written.keys() == consumed.keys()
    for key in consumed:
        np.testing.assert_array_equal(written[key], consumed[key], err_msg=key)


# ------------------------------------------------------------------------------------------------ live timm folders
def test_live_exported_folder_loads_with_timms_own_path(tmp_path):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    module, params = random_vit(posemb="learn", class_token=True)
    export_encoder(tmp_path / "encoder", module, params, mean=0.5, std=0.25, image_size=32)
    cli.main(["export", "--workdir", str(tmp_path / "encoder"), "--output", str(tmp_path / "hf")])
    model = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    assert model.pretrained_cfg["mean"] == (0.5,) or list(model.pretrained_cfg["mean"]) == [0.5]
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 1)).astype(np.float32)
    with torch.no_grad():
        expected = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2))[:, model.num_prefix_tokens:]
    assert max_err(apply(module, params, x), expected.numpy()) <= TOL


@pytest.mark.parametrize("kind", ["beit", "beit_shared", "vit_layer_scale"])
def test_live_timm_written_folder_imports(tmp_path, kind):
    """timm writes the folder (``save_for_hf``: config.json + model.safetensors); we import it, equal tokens."""
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    pytest.importorskip("huggingface_hub")
    common = dict(img_size=32, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    if kind.startswith("beit"):  # BEiT's defaults: no absolute posemb, q/v biases, mean pooling (no final norm)
        model = timm.create_model("beit_base_patch16_224", **common, init_values=0.1,
                                  use_rel_pos_bias=kind == "beit", use_shared_rel_pos_bias=kind != "beit")
    else:  # timm's ViT layer scale (ls1.gamma / ls2.gamma)
        model = timm.create_model("vit_base_patch16_224", **common, init_values=0.1, global_pool="")
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    timm.models.save_for_hf(model, str(tmp_path / "hf"), safe_serialization=True)
    encoder = load_encoder(tmp_path / "hf", mean=0.5, std=0.25)
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 1)).astype(np.float32)
    with torch.no_grad():
        expected = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2))[:, model.num_prefix_tokens:]
    assert max_err(apply(encoder.module, encoder.params, x), expected.numpy()) <= TOL
