"""attention_recall (sparse_attn.search) against a dense float64 computation with the
reference's explicit masks."""
import pytest
import torch

from sparse_attn import reference as ref
from sparse_attn.masks import BlockSparseMask
from sparse_attn.search import attention_recall, evaluate_candidates

from conftest import qkv


def dense_recall(q, k, mask):
    """mask: bool broadcastable to [B, Hq, Sq, Sk]; recall per (B, Hq), float64."""
    B, Sq, Hq, D = q.shape
    Sk = k.shape[1]
    kh = k.double().transpose(1, 2).repeat_interleave(Hq // k.shape[2], 1)
    s = (q.double().transpose(1, 2) @ kh.transpose(-1, -2)) * D ** -0.5
    causal = ref.causal_mask(Sq, Sk)
    p = torch.softmax(s.masked_fill(~causal, float("-inf")), -1).nan_to_num(0.0)
    kept = (p * (mask & causal)).sum(-1)
    seen = causal.any(-1)
    kept = torch.where(seen, kept, torch.ones_like(kept))
    return kept.mean(-1)


@pytest.mark.parametrize("Sq,Sk", [(300, 300), (100, 260)])
def test_recall_matches_dense(Sq, Sk):
    B, Hq, Hkv, D = 2, 4, 2, 32
    q, k, _ = qkv(B, Sq, Sk, Hq, Hkv, D, torch.float32, seed=Sq)
    g = torch.Generator().manual_seed(3)
    vertical = torch.randint(0, Sk, (B, Hq, 7), generator=g, dtype=torch.int32)
    slash = torch.randint(0, Sk, (B, Hq, 5), generator=g, dtype=torch.int32)
    nq, nk = -(-Sq // 64), -(-Sk // 64)
    bmap = torch.rand(B, Hq, nq, nk, generator=g) < 0.4
    bmask = BlockSparseMask.from_dense(bmap, 64)
    cands = [("dense",), ("streaming", 8, 40), ("vertical_slash", vertical, slash), ("block_sparse", bmask)]
    got = attention_recall(q, k, cands, block=64)
    assert got.shape == (4, B, Hq)
    masks = [torch.ones(Sq, Sk, dtype=torch.bool),
             ref.streaming_dense_mask(Sq, Sk, 8, 40),
             ref.vertical_slash_dense_mask(vertical, slash, Sq, Sk),
             ref.block_sparse_dense_mask(bmask.counts, bmask.indices, (64, 64), Sq, Sk)]
    for c, m in enumerate(masks):
        torch.testing.assert_close(got[c], dense_recall(q, k, m), rtol=0, atol=1e-5)
    # cost: the share of the causal (query, key) pairs each mask keeps, per (batch, head)
    _, cost = evaluate_candidates(q, k, cands, block=64)
    causal = ref.causal_mask(Sq, Sk)
    for c, m in enumerate(masks):
        want = (m.expand(B, Hq, Sq, Sk) & causal).sum((-1, -2)).double() / causal.sum()
        torch.testing.assert_close(cost[c], want, rtol=0, atol=1e-12)
    assert torch.allclose(got[0], torch.ones_like(got[0]))
    assert (got[1:] < 1).all()  # the sparse candidates drop some mass on random inputs


def test_recall_errors():
    q, k, _ = qkv(1, 64, 64, 3, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        attention_recall(q, k, [("dense",)])
    q, k, _ = qkv(1, 64, 64, 2, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="unknown candidate"):
        attention_recall(q, k, [("magic",)])


def test_computed_fraction_counts_kernel_work():
    from sparse_attn.search import computed_fraction

    S, H = 256, 3
    dense_work = (1 + 2 + 3 + 4) * 64 * 64  # causal key blocks of the 4 query blocks
    full = BlockSparseMask.from_dense(torch.tril(torch.ones(4, 4, dtype=torch.bool))[None, None], 64)
    every = torch.arange(S, dtype=torch.int32)[None, None]
    for cand in [("dense",), ("block_sparse", full), ("streaming", 0, S), ("vertical_slash", every[..., :1], every)]:
        torch.testing.assert_close(computed_fraction(cand, S, S, H), torch.ones(1, H, dtype=torch.float64))
    # main diagonal only: one key block per query block; column 0 is a gathered column
    # (64 rows) except in query block 0, where the diagonal block already holds it
    vs = ("vertical_slash", torch.zeros(1, 1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, dtype=torch.int32))
    want = (4 * 64 * 64 + 3 * 64) / dense_work
    assert computed_fraction(vs, S, S, H).tolist() == [[want] * H]
    # sink 16 + window 64: per query block its sink keys below the window plus the range from
    # the first row's window start to the last row: 64, 1 + 127, 16 + 127, 16 + 127 keys
    want = (64 + 128 + 143 + 143) * 64 / dense_work
    assert computed_fraction(("streaming", 16, 64), S, S, H).tolist() == [[want] * H]
    half = BlockSparseMask.from_dense(torch.eye(4, dtype=torch.bool)[None, None].expand(2, H, 4, 4), 64)
    assert computed_fraction(("block_sparse", half), S, S, H).shape == (2, H)
    torch.testing.assert_close(computed_fraction(("block_sparse", half), S, S, H),
                               torch.full((2, H), 4 * 64 * 64 / dense_work, dtype=torch.float64))
