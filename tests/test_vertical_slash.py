"""vertical_slash_index (against a direct Python construction, exactly) and
vertical_slash_attention (against the float64 reference with the 2x rule)."""
import math

import pytest
import torch

import sparse_attn
from sparse_attn import reference as ref
from sparse_attn.vertical_slash import vertical_slash_attention, vertical_slash_index

from conftest import (DEVICES, assert_close_2x, assert_lse_close, poisoned_like, qkv,
                      same_precision_attention, skip_unless_prefill_kernel)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_lists(B, H, NV, NS, Sk, seed, beyond=True):
    """Random columns/offsets with duplicates and (if beyond) values past the sequence."""
    g = gen(seed)
    hi = Sk + (Sk // 2 if beyond else 0)
    vertical = torch.randint(0, hi, (B, H, NV), generator=g, dtype=torch.int32)
    slash = torch.randint(0, hi, (B, H, NS), generator=g, dtype=torch.int32)
    if NV > 3:
        vertical[..., 1] = vertical[..., 0]  # duplicates
    if NS > 3:
        slash[..., 2] = slash[..., 3]
    return vertical, slash


# --------------------------------------------------------------------------- converter


def direct_index(vertical, slash, Sq, Sk, bs):
    """Per (b, h, m): sorted key-block starts and sorted leftover columns, built directly."""
    B, H = max(vertical.shape[0], slash.shape[0]), max(vertical.shape[1], slash.shape[1])
    out = {}
    for b in range(B):
        for h in range(H):
            vs = {int(x) for x in vertical[b % vertical.shape[0], h % vertical.shape[1]] if 0 <= x < Sk}
            ss = {int(x) for x in slash[b % slash.shape[0], h % slash.shape[1]] if 0 <= x < Sk} | {0}
            for m in range(math.ceil(Sq / bs)):
                rows = range(m * bs, min((m + 1) * bs, Sq))
                ps = [r + Sk - Sq for r in rows]
                keys = {p - s for p in ps for s in ss if 0 <= p - s}
                blocks = sorted({j // bs for j in keys})
                cols = sorted(j for j in vs if j <= max(ps) and j // bs not in blocks)
                out[b, h, m] = ([n * bs for n in blocks], cols)
    return out


@pytest.mark.parametrize("Sq,Sk,bs", [(300, 300, 64), (130, 401, 64), (250, 180, 64), (257, 257, 128),
                                      (100, 100, 16), (333, 333, 100)])
@pytest.mark.parametrize("NV,NS", [(7, 5), (40, 60), (0, 0), (600, 600)])
def test_index_matches_direct_construction(Sq, Sk, bs, NV, NS):
    B, H = 2, 3
    vertical, slash = random_lists(B, H, NV, NS, Sk, seed=Sq + NV + bs)
    bc, bo, cc, ci = vertical_slash_index(vertical, slash, seqlen_q=Sq, seqlen_k=Sk, block_size=bs)
    MB = math.ceil(Sq / bs)
    assert bc.shape == (B, H, MB) and cc.shape == (B, H, MB) and ci.shape == (B, H, MB, NV)
    assert bo.shape == (B, H, MB, min(2 * (NS + 1), math.ceil(Sk / bs)))
    assert all(t.dtype == torch.int32 for t in (bc, bo, cc, ci))
    want = direct_index(vertical, slash, Sq, Sk, bs)
    for (b, h, m), (blocks, cols) in want.items():
        nb, nc = int(bc[b, h, m]), int(cc[b, h, m])
        assert bo[b, h, m, :nb].tolist() == blocks, (b, h, m)
        assert ci[b, h, m, :nc].tolist() == cols, (b, h, m)
        assert (bo[b, h, m, nb:] == 0).all() and (ci[b, h, m, nc:] == 0).all()


def test_index_every_block_covered_and_broadcast():
    """Budgets past the sequence list every causal key block and no columns; a [1, 1, n]
    list broadcasts against a [B, H, n] one."""
    S, bs = 320, 64
    vertical = torch.arange(S + 50, dtype=torch.int32).view(1, 1, -1)
    slash = torch.arange(S + 50, dtype=torch.int32).flip(-1).expand(2, 3, -1)
    bc, bo, cc, ci = vertical_slash_index(vertical, slash, seqlen_q=S, seqlen_k=S, block_size=bs)
    assert bc.shape == (2, 3, S // bs)
    for m in range(S // bs):
        assert (bc[..., m] == m + 1).all()
        assert bo[0, 0, m, : m + 1].tolist() == [n * bs for n in range(m + 1)]
    assert (cc == 0).all()


def test_index_main_diagonal_always_covered():
    """No offset 0 in the input: the main diagonal's blocks are still listed."""
    slash = torch.tensor([[[200]]], dtype=torch.int32)
    vertical = torch.zeros(1, 1, 0, dtype=torch.int32)
    bc, bo, _, _ = vertical_slash_index(vertical, slash, seqlen_q=256, seqlen_k=256, block_size=64)
    for m in range(4):
        assert m * 64 in bo[0, 0, m, : int(bc[0, 0, m])].tolist()


# --------------------------------------------------------------------------- attention


def check_attention(q, k, v, vertical, slash, dtype, what, causal=True, scale=None):
    out = poisoned_like(q)
    res, lse = vertical_slash_attention(q, k, v, vertical, slash, causal=causal, scale=scale,
                                        return_lse=True, out=out)
    assert res is out
    qc, kc, vc = q.cpu(), k.cpu(), v.cpu()
    out_ref, lse_ref = ref.vertical_slash_attention(qc, kc, vc, vertical.cpu(), slash.cpu(), causal=causal,
                                                    scale=scale, return_lse=True)
    mask = ref.vertical_slash_dense_mask(vertical.cpu(), slash.cpu(), q.shape[1], k.shape[1], causal=causal)
    out_pt = same_precision_attention(qc, kc, vc, mask, scale=scale)
    assert_close_2x(out.cpu(), out_ref, out_pt, dtype, what)
    assert_lse_close(lse.cpu(), lse_ref, what)


# The attention cases, shared with tests/test_cuda_prefill.py: GQA and batch 2 (ragged),
# Sq < Sk, Sq > Sk (the first rows see no key), MQA with head_dim 32 (CPU only) x column
# and offset budgets: few, many columns (gathered tiles of 64), many offsets, none.
ATTENTION_SHAPES = [(2, 300, 300, 4, 2, 64), (1, 130, 401, 2, 1, 128), (1, 250, 180, 2, 2, 64), (1, 200, 200, 8, 1, 32)]
LIST_SIZES = [(10, 8), (70, 3), (3, 90), (0, 0)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,Sq,Sk,Hq,Hkv,D", ATTENTION_SHAPES)
@pytest.mark.parametrize("NV,NS", LIST_SIZES)
def test_attention_matches_reference(device, dtype, B, Sq, Sk, Hq, Hkv, D, NV, NS):
    skip_unless_prefill_kernel(device, dtype, D)
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, dtype, device, seed=NV * 3 + NS)
    vertical, slash = random_lists(B, Hq, NV, NS, Sk, seed=Sq + NV)
    check_attention(q, k, v, vertical.to(device), slash.to(device), dtype, f"{Sq}x{Sk} NV={NV} NS={NS}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_budget_past_sequence_equals_dense_causal(dtype):
    B, S, Hq, Hkv, D = 1, 333, 4, 2, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, dtype, seed=11)
    vertical = torch.arange(S + 10, dtype=torch.int32).expand(B, Hq, -1)
    slash = torch.arange(S + 10, dtype=torch.int32).flip(-1).expand(B, Hq, -1)
    out, lse = vertical_slash_attention(q, k, v, vertical, slash, return_lse=True)
    out_ref, lse_ref = ref.attention(q, k, v, ref.causal_mask(S, S), return_lse=True)
    out_pt = same_precision_attention(q, k, v, ref.causal_mask(S, S))
    assert_close_2x(out, out_ref, out_pt, dtype, "budget past sequence")
    assert_lse_close(lse, lse_ref, "budget past sequence")
    if dtype == torch.float32:  # and agrees with dense block-sparse attention to fp32 rounding
        nb = math.ceil(S / 64)
        dense = sparse_attn.BlockSparseMask.from_dense(torch.ones(1, 1, nb, nb, dtype=torch.bool), 64)
        torch.testing.assert_close(out, sparse_attn.block_sparse_attention(q, k, v, dense), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_structured_patterns(dtype):
    """Dense local diagonals and contiguous sink columns (the all-visible fast paths), many
    columns (several column tiles), broadcast lists, a strided [B, H, S, D] layout."""
    B, S, Hq, Hkv, D = 2, 700, 4, 2, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, dtype, seed=5, layout="bhsd")
    vertical = torch.cat([torch.arange(130), torch.randint(130, S, (400,), generator=gen(1))]).int()
    slash = torch.cat([torch.arange(150), torch.tensor([300, 301, 555])]).int()
    check_attention(q, k, v, vertical.view(1, 1, -1), slash.view(1, 1, -1), dtype, "structured")
    check_attention(q, k, v, vertical.view(1, 1, -1).expand(B, 1, -1), slash.view(1, 1, -1).expand(1, Hq, -1),
                    dtype, "broadcast")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_not_causal(dtype):
    """Without the causal mask, columns in the future of a row are attended too."""
    q, k, v = qkv(1, 200, 260, 2, 1, 64, dtype, seed=8)
    vertical, slash = random_lists(1, 2, 30, 10, 260, seed=9)
    check_attention(q, k, v, vertical, slash, dtype, "not causal", causal=False, scale=0.3)


def test_empty_lists_give_main_diagonal():
    """With no columns and no offsets each row sees exactly its own key: out = v there."""
    q, k, v = qkv(1, 100, 100, 2, 2, 64, torch.float32, seed=3)
    empty = torch.zeros(1, 2, 0, dtype=torch.int32)
    out = vertical_slash_attention(q, k, v, empty, empty)
    torch.testing.assert_close(out, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad,match", [
    (dict(slash=torch.tensor([[[-1, 3]]])), "slash"),
    (dict(vertical=torch.tensor([[[4, -2]]])), "vertical"),
    (dict(vertical=torch.zeros(1, 2)), "vertical"),
    (dict(slash=torch.zeros(1, 1, 3)), "slash"),  # float
    (dict(vertical=torch.zeros(1, 3, 2, dtype=torch.int32)), "vertical"),  # 3 heads vs 2
    (dict(slash=torch.zeros(2, 1, 2, dtype=torch.int32)), "slash"),  # batch 2 vs 1
])
def test_errors_name_the_argument(bad, match):
    q, k, v = qkv(1, 64, 64, 2, 1, 64, torch.float32, seed=0)
    args = dict(vertical=torch.tensor([[[1, 2]]]), slash=torch.tensor([[[0, 5]]]))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        vertical_slash_attention(q, k, v, args["vertical"], args["slash"])


def test_index_errors():
    v, s = torch.tensor([[[1]]]), torch.tensor([[[0]]])
    with pytest.raises(ValueError, match="block_size"):
        vertical_slash_index(v, s, seqlen_q=10, seqlen_k=10, block_size=0)
    with pytest.raises(ValueError, match="seqlen_k"):
        vertical_slash_index(v, s, seqlen_q=10, seqlen_k=-1)
    with pytest.raises(ValueError, match="head"):
        vertical_slash_index(torch.zeros(1, 2, 1, dtype=torch.int32), torch.zeros(1, 3, 1, dtype=torch.int32),
                             seqlen_q=10, seqlen_k=10)


def test_unnormalized_lists_through_the_raw_op_stay_in_bounds():
    """The op itself (no Python normalization) tolerates unsorted, repeated and too large
    entries and counts past the capacity (no crash, finite output) and rejects negatives."""
    q, k, v = qkv(1, 128, 128, 2, 1, 64, torch.float32, seed=2)
    lst = torch.tensor([[[90, 7, 3, 3, 500, 1]]], dtype=torch.int32).expand(1, 2, -1).contiguous()
    cnt = torch.full((1, 2), 99, dtype=torch.int32)
    out = torch.empty_like(q)
    torch.ops.sparse_attn.vertical_slash_attention(q, k, v, out, lst, cnt, lst, cnt, True, 0.125)
    assert torch.isfinite(out).all()
    torch.ops.sparse_attn.vertical_slash_index(lst, cnt, lst, cnt, 128, 128, 64)
    neg = lst.clone()
    neg[0, 1, 4] = -3
    with pytest.raises(ValueError, match="slash holds negative"):
        torch.ops.sparse_attn.vertical_slash_attention(q, k, v, out, lst, cnt, neg, cnt, True, 0.125)


def test_compile_and_opcheck():
    q, k, v = qkv(1, 130, 130, 2, 1, 64, torch.float32, seed=4)
    vertical, slash = random_lists(1, 2, 12, 9, 130, seed=4)
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def fn(q, k, v, vertical, slash):
        return vertical_slash_attention(q, k, v, vertical, slash) * 2

    torch.testing.assert_close(fn(q, k, v, vertical, slash), 2 * vertical_slash_attention(q, k, v, vertical, slash),
                               rtol=0, atol=1e-6)
    torch._dynamo.reset()
    from sparse_attn.vertical_slash import normalize_vertical_slash
    vl, vc, sl, sc = normalize_vertical_slash(vertical, slash, 130)
    torch.library.opcheck(torch.ops.sparse_attn.vertical_slash_attention,
                          (q, k, v, torch.empty_like(q), vl, vc, sl, sc, True, 0.125))
    torch.library.opcheck(torch.ops.sparse_attn.vertical_slash_index, (vl, vc, sl, sc, 130, 130, 64))


def test_estimator_to_attention_end_to_end():
    """The estimator's lists feed the op directly (the docstring example, smaller)."""
    q, k, v = qkv(1, 600, 600, 4, 2, 64, torch.bfloat16, seed=12)
    vertical, slash = sparse_attn.estimate_vertical_slash(q, k, n_vertical=50, n_slash=120)
    check_attention(q, k, v, vertical, slash, torch.bfloat16, "estimated")
