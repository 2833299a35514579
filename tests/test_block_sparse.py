"""block_sparse_attention against the float64 reference (flash-attention's 2x rule)."""
import math

import pytest
import torch

import sparse_attn
from sparse_attn import reference as ref
from sparse_attn.masks import BlockSparseMask

from conftest import (DEVICES, assert_close_2x, assert_lse_close, poisoned_like, qkv,
                      same_precision_attention, skip_if_no_engine)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_block_map(B, H, MB, NB, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((B, H, MB, NB), generator=g) < density


def check(q, k, v, mask, causal, dtype, what, scale=None):
    Sq, Sk = q.shape[1], k.shape[1]
    out = poisoned_like(q)
    res, lse = sparse_attn.block_sparse_attention(q, k, v, mask, causal=causal, scale=scale,
                                                  return_lse=True, out=out)
    assert res is out
    out_ref, lse_ref = ref.block_sparse_attention(
        q.cpu(), k.cpu(), v.cpu(), mask.counts.cpu(), mask.indices.cpu(), mask.block_size,
        full_counts=None if mask.full_counts is None else mask.full_counts.cpu(),
        full_indices=None if mask.full_indices is None else mask.full_indices.cpu(),
        causal=causal, scale=scale, return_lse=True)
    dense = ref.block_sparse_dense_mask(
        mask.counts.cpu(), mask.indices.cpu(), mask.block_size, Sq, Sk,
        full_counts=None if mask.full_counts is None else mask.full_counts.cpu(),
        full_indices=None if mask.full_indices is None else mask.full_indices.cpu(), causal=causal)
    out_pt = same_precision_attention(q.cpu(), k.cpu(), v.cpu(), dense, scale)
    assert_close_2x(out.cpu(), out_ref, out_pt, dtype, what)
    assert_lse_close(lse.cpu(), lse_ref, what)
    return out, lse


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Sq,Sk,Hq,Hkv,D,bq,bk", [
    (2, 256, 256, 4, 2, 64, 64, 64),     # GQA, batch 2
    (1, 200, 300, 4, 1, 128, 64, 128),   # Sq < Sk (bottom-right), ragged, MQA
    (2, 130, 130, 2, 2, 64, 128, 128),   # ragged, last blocks nearly empty
    (1, 384, 384, 8, 2, 128, 128, 64),   # bq > bk
    (1, 257, 321, 2, 1, 80, 32, 64),     # head_dim 80, bq 32, ragged both
])
@pytest.mark.parametrize("causal", [True, False])
def test_random_masks(device, dtype, B, Sq, Sk, Hq, Hkv, D, bq, bk, causal):
    skip_if_no_engine(device)
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, dtype, device, seed=Sq + D)
    MB, NB = math.ceil(Sq / bq), math.ceil(Sk / bk)
    bmap = random_block_map(B, Hq, MB, NB, 0.5, seed=7)
    bmap[:, :, 1] = False  # an empty row: zeros and lse -inf
    mask = BlockSparseMask.from_dense(bmap.to(device), (bq, bk))
    out, lse = check(q, k, v, mask, causal, dtype, f"{dtype} {Sq}x{Sk} causal={causal}")
    assert (out[:, bq:min(2 * bq, Sq)] == 0).all()
    assert torch.isinf(lse[:, :, bq:min(2 * bq, Sq)]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_blocks_equal_dense(device, dtype):
    skip_if_no_engine(device)
    B, S, Hq, Hkv, D = 2, 320, 4, 2, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, dtype, device, seed=3)
    nb = math.ceil(S / 64)
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, nb, nb, dtype=torch.bool, device=device), 64)
    out = sparse_attn.block_sparse_attention(q, k, v, mask)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.double().transpose(1, 2), k.double().transpose(1, 2), v.double().transpose(1, 2),
        is_causal=True, enable_gqa=True).transpose(1, 2)
    out_pt = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True).transpose(1, 2)
    assert_close_2x(out.cpu(), sdpa.cpu(), out_pt.cpu(), dtype, "all blocks vs dense SDPA")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_broadcast_full_lists_and_strided_inputs(device, dtype):
    skip_if_no_engine(device)
    B, S, Hq, Hkv, D, bs = 2, 256, 4, 2, 64, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, dtype, device, seed=11, layout="bhsd")
    assert q.stride(-1) == 1 and not q.is_contiguous()
    nb = S // bs
    bmap = random_block_map(1, 1, nb, nb, 0.6, seed=5) | torch.eye(nb, dtype=torch.bool)
    below = torch.tril(torch.ones(nb, nb, dtype=torch.bool), -1)
    full = BlockSparseMask.from_dense(bmap & below, bs)       # strictly below the diagonal
    part = BlockSparseMask.from_dense(bmap & ~below, bs)      # the diagonal (and above)
    mask = BlockSparseMask(part.counts.to(device), part.indices.to(device), bs,
                           full.counts.to(device), full.indices.to(device))
    check(q, k, v, mask, True, dtype, "full lists + broadcast + strided")
    # A block listed in both lists is attended once.
    both = BlockSparseMask(full.counts.to(device), full.indices.to(device), bs,
                           full.counts.to(device), full.indices.to(device))
    single = BlockSparseMask(full.counts.to(device), full.indices.to(device), bs)
    torch.testing.assert_close(sparse_attn.block_sparse_attention(q, k, v, both),
                               sparse_attn.block_sparse_attention(q, k, v, single), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_single_block_and_custom_scale(device):
    skip_if_no_engine(device)
    q, k, v = qkv(1, 64, 64, 2, 1, 64, torch.float32, device, seed=21)
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device), 64)
    check(q, k, v, mask, True, torch.float32, "single block", scale=0.3)


@pytest.mark.parametrize("device", DEVICES)
def test_garbage_past_count_is_never_read(device):
    skip_if_no_engine(device)
    q, k, v = qkv(1, 256, 256, 2, 2, 64, torch.float32, device, seed=4)
    mask = BlockSparseMask.from_dense(random_block_map(1, 2, 4, 4, 0.5, seed=1).to(device), 64)
    idx = mask.indices.clone()
    valid = torch.arange(idx.shape[-1], device=device) < mask.counts[..., None]
    # In-range (and negative) garbage: a kernel reading past the count would attend it.
    g = torch.Generator().manual_seed(2)
    junk = torch.randint(-3, 4, idx.shape, generator=g, dtype=torch.int32).to(device)
    idx[~valid] = junk[~valid]
    a = sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask(mask.counts, idx, 64))
    b = sparse_attn.block_sparse_attention(q, k, v, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_block_mask_matches_flex_attention(dtype):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, S, Hq, Hkv, D = 1, 256, 4, 2, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, dtype, seed=9)
    nb = S // 128
    pattern = random_block_map(1, Hq, nb, nb, 0.6, seed=2)[0] | torch.eye(nb, dtype=torch.bool)

    def mask_mod(b, h, q_idx, kv_idx):  # the whole pattern lives in mask_mod (eager flex ignores blocks)
        return (q_idx >= kv_idx) & pattern[h, q_idx // 128, kv_idx // 128]

    bm = create_block_mask(mask_mod, 1, Hq, S, S, device="cpu")
    # On the partial (diagonal) blocks this mask_mod is exactly causal, so the BlockMask is
    # accepted as is; its full blocks skip mask_mod in flex and need no mask here either.
    out = sparse_attn.block_sparse_attention(q, k, v, bm)
    flex = flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm,
                          enable_gqa=True).transpose(1, 2)
    flex64 = flex_attention(q.double().transpose(1, 2), k.double().transpose(1, 2), v.double().transpose(1, 2),
                            block_mask=bm, enable_gqa=True).transpose(1, 2)
    assert_close_2x(out, flex64, flex, dtype, "FlexAttention BlockMask input vs flex_attention")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,Sq,Sk,Hq,Hkv,D,bq,bk", [
    (1, 300, 200, 2, 1, 64, 64, 64),     # Sq > Sk: the first rows see nothing (zeros, -inf)
    (1, 192, 192, 12, 1, 64, 48, 64),    # GQA group of 12 (> 8 heads per work item), bq 48
    (1, 160, 600, 2, 2, 16, 16, 256),    # head_dim 16, bq 16, bk 256
    (1, 130, 130, 2, 1, 256, 64, 64),    # head_dim 256
])
def test_more_shapes(dtype, B, Sq, Sk, Hq, Hkv, D, bq, bk):
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, dtype, seed=Sq + Hq)
    MB, NB = math.ceil(Sq / bq), math.ceil(Sk / bk)
    mask = BlockSparseMask.from_dense(random_block_map(B, Hq, MB, NB, 0.6, seed=3), (bq, bk))
    for causal in (True, False):
        check(q, k, v, mask, causal, dtype, f"{Sq}x{Sk} Hq={Hq} D={D} bq={bq} bk={bk} causal={causal}")


def test_one_thread_matches_two():
    q, k, v = qkv(1, 256, 256, 4, 2, 64, torch.bfloat16, seed=8)
    mask = BlockSparseMask.from_dense(random_block_map(1, 4, 4, 4, 0.6, seed=4), 64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sparse_attn.block_sparse_attention(q, k, v, mask)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, sparse_attn.block_sparse_attention(q, k, v, mask), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_odd_strides_and_offsets(dtype):
    # K/V carved out of a wider buffer at an odd offset with an odd row stride: the
    # 16-bit packing cannot read them as 32-bit pairs and must fall back.
    B, S, H, D = 1, 200, 2, 64
    g = torch.Generator().manual_seed(5)
    buf = torch.randn(B, S, 2 * H * D + 1, generator=g).to(dtype)
    k = buf[..., 1:1 + H * D].unflatten(-1, (H, D))
    v = buf[..., 1 + H * D:1 + 2 * H * D].unflatten(-1, (H, D))
    assert k.stride(1) % 2 == 1 and k.storage_offset() % 2 == 1
    q = torch.randn(B, S, 2 * H, D, generator=g).to(dtype)
    mask = BlockSparseMask.from_dense(random_block_map(1, 2 * H, 4, 4, 0.7, seed=6), 64)
    check(q, k, v, mask, True, dtype, "odd strides")
