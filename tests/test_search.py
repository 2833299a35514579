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
