"""The ViT encoder (models/vit.py): variant table, parameter names, init, token selection, padding, attention, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usjepa_jax.models import VisionTransformer, parse_variant, sincos_posemb_2d, vit_from_variant


def tiny_vit(**kw):
    return VisionTransformer(**{**dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8), **kw})


def test_variant_table_covers_paper_sizes():
    assert parse_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)
    for name in ("mu", "Ti", "S", "B", "L", "H"):
        for patch in (8, 14, 16):
            assert parse_variant(f"{name}/{patch}")["patch_size"] == patch
    with pytest.raises(ValueError, match="'X/16'"):
        parse_variant("X/16")
    with pytest.raises(ValueError, match="patch size 15"):
        parse_variant("B/15")


def test_vit_b16_parameter_count_and_names():
    model = vit_from_variant("B/16")
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))["params"]
    n = sum(x.size for x in jax.tree.leaves(shapes))
    assert n == 86_567_656 - 768 * 1000 - 1000 - 197 * 768 - 768  # timm vit_base_patch16_224 less head, pos, cls
    assert shapes["patch_embed"]["kernel"].shape == (16, 16, 3, 768)
    block = shapes["encoder"]["blocks_11"]
    assert block["attn"]["qkv"]["kernel"].shape == (768, 2304)
    assert block["mlp"]["fc2"]["kernel"].shape == (3072, 768)
    assert set(block) == {"norm1", "attn", "norm2", "mlp"}
    assert "norm" in shapes["encoder"]


def test_sincos_posemb_matches_definition():
    emb = sincos_posemb_2d((3, 4), 8)
    assert emb.shape == (12, 8)
    # patch (row 2, col 1): first half encodes the column, second half the row; omega = [1, 1/100].
    expected = [np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01), np.sin(2), np.sin(0.02), np.cos(2), np.cos(0.02)]
    np.testing.assert_allclose(emb[2 * 4 + 1], expected, rtol=1e-6)


def test_encode_subset_equals_full_encoding_without_attention_between_subsets():
    model = tiny_vit(depth=0)  # with no blocks, token selection must commute with the per-token layers
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
    params = model.init(jax.random.key(0), images)["params"]
    full, aux = model.apply({"params": params}, images)
    assert full.shape == (2, 16, 32) and aux["grid_size"] == (4, 4)
    idx = jnp.array([[0, 5, 15], [3, 3, 7]])
    subset, _ = model.apply({"params": params}, images, idx)
    np.testing.assert_allclose(subset, jnp.take_along_axis(full, idx[..., None], axis=1), atol=1e-6)


def test_padded_tokens_do_not_change_valid_outputs():
    model = tiny_vit()
    images = jax.random.normal(jax.random.key(1), (1, 32, 32, 1))
    params = model.init(jax.random.key(0), images)["params"]
    idx = jnp.array([[1, 2, 9]])
    ref, _ = model.apply({"params": params}, images, idx)
    padded_idx = jnp.array([[1, 2, 9, 0, 4]])
    valid = jnp.array([[True, True, True, False, False]])
    out, _ = model.apply({"params": params}, images, padded_idx, valid)
    np.testing.assert_allclose(out[:, :3], ref, atol=1e-5)


def test_ijepa_init_rescales_residual_projections():
    model = tiny_vit(width=64, depth=4, mlp_dim=256)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))["params"]["encoder"]
    for layer in range(4):
        std = float(np.std(params[f"blocks_{layer}"]["attn"]["proj"]["kernel"]))
        qkv_std = float(np.std(params[f"blocks_{layer}"]["attn"]["qkv"]["kernel"]))
        expected = 0.02 / np.sqrt(2 * (layer + 1))  # the measured std is I-JEPA's 0.02 (not linen's 0.88 x 0.02)
        assert abs(std - expected) / expected < 0.15, (layer, std, expected)
        assert abs(qkv_std - 0.02) / 0.02 < 0.05, qkv_std
    assert not np.any(params["blocks_0"]["attn"]["qkv"]["bias"])


def test_class_token_and_learned_posemb():
    model = tiny_vit(posemb="learn", class_token=True)
    images = jnp.zeros((2, 32, 32, 1))
    variables = model.init(jax.random.key(0), images)
    out, _ = model.apply(variables, images)
    assert out.shape == (2, 16, 32)
    assert variables["params"]["pos_embed"].shape == (1, 16, 32)
    assert variables["params"]["cls_token"].shape == (1, 1, 32)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 3e-2)])
def test_einsum_attention_equals_jax_dot_product_attention(dtype, tol):
    """The CPU attention (models/vit.py einsum_attention) is jax.nn.dot_product_attention: values and gradients,
    with a key-padding mask."""
    from usjepa_jax.models.vit import attention, key_padding_mask
    q, k, v = (jax.random.normal(jax.random.key(i), (3, 11, 2, 8)).astype(dtype) for i in range(3))
    mask = key_padding_mask(jnp.arange(11)[None] < jnp.array([[11], [4], [1]]))

    def loss(impl, q, k, v):
        return (attention(q, k, v, mask, impl).astype(jnp.float32) ** 2).sum()

    ref, ours = attention(q, k, v, mask, "xla"), attention(q, k, v, mask, "einsum")
    assert ours.dtype == dtype
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32), atol=tol, rtol=tol)
    for g_ref, g_ours in zip(jax.grad(loss, (1, 2, 3))("xla", q, k, v), jax.grad(loss, (1, 2, 3))("einsum", q, k, v)):
        np.testing.assert_allclose(np.asarray(g_ours, np.float32), np.asarray(g_ref, np.float32), atol=10 * tol,
                                   rtol=10 * tol)
    with pytest.raises(ValueError, match="flash"):
        attention(q, k, v, mask, "flash")


@pytest.mark.parametrize("policy", ["", "dots_saveable"])
def test_remat_policies_change_memory_not_results(policy):
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
    plain, remat = tiny_vit(), tiny_vit(remat=True, remat_policy=policy)
    params = plain.init(jax.random.key(0), images)["params"]

    def grads(model):
        return jax.grad(lambda p: (model.apply({"params": p}, images)[0] ** 2).sum())(params)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), grads(plain), grads(remat))
    with pytest.raises(ValueError, match="remat policy"):
        tiny_vit(remat=True, remat_policy="everything").init(jax.random.key(0), images)


@pytest.mark.parametrize("mask_kind,remat,rel_pos", [("keys", False, False), ("per_query", False, False),
                                                      ("keys", True, True)])
def test_last_outputs_only_equal_the_whole_stack_tail(mask_kind, remat, rel_pos):
    """``Transformer(..., outputs=n)`` (the predictor keeps only its mask tokens): the last block computes the last n
    tokens alone, and they, and the gradients through them, equal the whole stack's."""
    from usjepa_jax.models.vit import Transformer

    key = jax.random.key(0)
    x = jax.random.normal(key, (2, 9, 32))
    valid = jnp.array([[True] * 7 + [False, True], [True] * 9])
    mask = valid[:, None, None, :]
    if mask_kind == "per_query":  # a [B, 1, T, T] mask, as the shared-context predictor's
        mask = mask & (jnp.tril(jnp.ones((9, 9), bool)) | (jnp.arange(9) < 4))[None, None]
    positions = jnp.tile(jnp.arange(1, 10)[None], (2, 1)) if rel_pos else None
    stack = Transformer(depth=3, num_heads=4, mlp_dim=64, remat=remat, rel_pos_grid=(3, 3) if rel_pos else None)
    params = stack.init(key, x, mask, positions)["params"]
    params = jax.tree.map(lambda w: w + 0.1 * jax.random.normal(key, w.shape), params)  # away from init's zeros

    def tail(p, x, outputs):
        out = stack.apply({"params": p}, x, mask, positions, outputs)
        return out[:, -3:] if outputs is None else out

    whole, last = tail(params, x, None), tail(params, x, 3)
    assert last.shape == (2, 3, 32)
    np.testing.assert_allclose(last, whole, atol=1e-5, rtol=1e-5)
    grads = [jax.grad(lambda p, x: (tail(p, x, n) ** 2).sum(), argnums=(0, 1))(params, x) for n in (None, 3)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), *grads)


def test_patch_embed_is_the_strided_convolution():
    """PatchEmbed (one matmul of flattened patches) has nn.Conv's parameters, initial values and outputs."""
    import flax.linen as nn

    from usjepa_jax.models.vit import PatchEmbed, trunc_normal

    images = jax.random.normal(jax.random.key(2), (2, 24, 16, 3))
    conv = nn.Conv(32, (8, 8), strides=(8, 8), padding="VALID", kernel_init=trunc_normal(),
                   bias_init=nn.initializers.zeros)
    conv_params = conv.init(jax.random.key(0), images)["params"]
    embed = PatchEmbed(32, 8)
    params = embed.init(jax.random.key(0), images)["params"]
    jax.tree.map(np.testing.assert_array_equal, params, conv_params)  # same names, shapes and initial values
    params = {"kernel": params["kernel"], "bias": jax.random.normal(jax.random.key(3), (32,))}
    expected = conv.apply({"params": params}, images).reshape(2, 3 * 2, 32)  # row-major patch grid
    np.testing.assert_allclose(embed.apply({"params": params}, images), expected, rtol=1e-5, atol=1e-5)
