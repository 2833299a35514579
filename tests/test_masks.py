"""BlockSparseMask converters, density, streaming_mask and estimate_block_sparse.

Every expectation here is computed independently of ``sparse_attn.masks``: block maps by
plain Python loops or from ``sparse_attn.reference`` element masks, top-k choices from
float64 pooled scores.
"""
import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

import sparse_attn
from sparse_attn import reference as ref
from sparse_attn.masks import BlockSparseMask

from conftest import assert_close_2x, qkv, same_precision_attention


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_block_map(shape, p, seed):
    return torch.rand(shape, generator=gen(seed)) < p


def element_to_block_map(elem, bq, bk):
    """bool [..., Sq, Sk] -> bool [..., MB, NB]: block holds at least one True pair."""
    Sq, Sk = elem.shape[-2:]
    MB, NB = math.ceil(Sq / bq), math.ceil(Sk / bk)
    pad = torch.zeros(*elem.shape[:-2], MB * bq, NB * bk, dtype=torch.bool)
    pad[..., :Sq, :Sk] = elem
    return pad.view(*elem.shape[:-2], MB, bq, NB, bk).any(-1).any(-2)


def causal_blocks(Sq, Sk, bq, bk):
    """bool [MB, NB]: block holds a causally visible pair (from the reference element mask)."""
    return element_to_block_map(ref.causal_mask(Sq, Sk), bq, bk)


def diagonal_blocks(Sq, Sk, bq, bk):
    """bool [MB, NB]: key blocks that hold the diagonal key position of some row of the block."""
    MB, NB = math.ceil(Sq / bq), math.ceil(Sk / bk)
    out = torch.zeros(MB, NB, dtype=torch.bool)
    for i in range(Sq):
        p = Sk - Sq + i
        if 0 <= p < Sk:
            out[i // bq, p // bk] = True
    return out


# --------------------------------------------------------------------------- from_dense / to_dense


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 6, 6), (3, 1, 4, 9), (1, 1, 1, 1), (1, 1, 8, 3)])
@pytest.mark.parametrize("p", [0.3, 0.7])
def test_from_dense_round_trip(shape, p):
    bmap = random_block_map(shape, p, seed=sum(shape) + int(10 * p))
    bmap[..., 0, :] = False                    # a row with zero blocks
    if shape[-1] > 1:
        bmap[..., -1, :] = True                # a full row
    mask = BlockSparseMask.from_dense(bmap, block_size=(64, 128))
    assert mask.block_size == (64, 128)
    assert mask.counts.dtype == torch.int32 and mask.indices.dtype == torch.int32
    assert tuple(mask.counts.shape) == shape[:3]
    assert tuple(mask.indices.shape[:3]) == shape[:3]
    assert mask.num_q_blocks == shape[2]
    assert torch.equal(mask.to_dense(shape[-1]), bmap)
    # Counts are row sums; the valid prefix lists exactly the True columns, ascending.
    assert torch.equal(mask.counts, bmap.sum(-1).to(torch.int32))
    for b in range(shape[0]):
        for h in range(shape[1]):
            for m in range(shape[2]):
                c = int(mask.counts[b, h, m])
                got = mask.indices[b, h, m, :c].tolist()
                assert got == torch.nonzero(bmap[b, h, m]).flatten().tolist()
                assert got == sorted(set(got))


def test_from_dense_to_dense_infers_num_blocks():
    bmap = torch.zeros(1, 2, 3, 6, dtype=torch.bool)
    bmap[0, 1, 2, 4] = True
    bmap[0, 0, 0, 1] = True
    mask = BlockSparseMask.from_dense(bmap, 64)
    # Without num_k_blocks the map ends at the highest listed block (4) -> 5 columns.
    assert torch.equal(mask.to_dense(), bmap[..., :5])


def test_to_dense_ignores_garbage_past_count_and_unions_full_lists():
    counts = torch.tensor([[[2, 0, 1]]], dtype=torch.int32)
    indices = torch.tensor([[[[0, 3, 99, -7], [55, 66, 77, 88], [2, 2, 2, 2]]]], dtype=torch.int32)
    full_counts = torch.tensor([[[1, 2, 0]]], dtype=torch.int32)
    full_indices = torch.tensor([[[[1, 12345], [0, 1], [-1, 40]]]], dtype=torch.int32)
    mask = BlockSparseMask(counts, indices, 64, full_counts, full_indices)
    want = torch.tensor([[[[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0]]]], dtype=torch.bool)
    assert torch.equal(mask.to_dense(4), want)


# --------------------------------------------------------------------------- FlexAttention


def flex_union(bm):
    """Dense bool [B, H, MB, NB] from a flex BlockMask's own kv + full lists (plain loops)."""
    B, H, MB = bm.kv_num_blocks.shape
    NB = bm.kv_indices.shape[-1]
    out = torch.zeros(B, H, MB, NB, dtype=torch.bool)
    lists = [(bm.kv_num_blocks, bm.kv_indices)]
    if bm.full_kv_num_blocks is not None:
        lists.append((bm.full_kv_num_blocks, bm.full_kv_indices))
    for c, idx in lists:
        for b in range(B):
            for h in range(H):
                for m in range(MB):
                    for j in range(int(c[b, h, m])):
                        out[b, h, m, int(idx[b, h, m, j])] = True
    return out


@pytest.mark.parametrize("Sq,Sk,bs", [(256, 256, 64), (300, 300, 64), (200, 330, 64), (384, 512, 128)])
def test_from_flex_causal(Sq, Sk, bs):
    off = Sk - Sq

    def causal(b, h, q_idx, kv_idx):
        return q_idx + off >= kv_idx

    bm = create_block_mask(causal, None, None, Sq, Sk, device="cpu", BLOCK_SIZE=bs)
    mask = BlockSparseMask.from_flex(bm)
    assert mask.block_size == (bs, bs)
    NB = math.ceil(Sk / bs)
    got = mask.to_dense(NB)
    want = flex_union(bm)[..., :NB]
    assert torch.equal(got, want)
    # Independently: exactly the blocks with a causally visible pair.
    assert torch.equal(got[0, 0], causal_blocks(Sq, Sk, bs, bs))
    # to_flex round trip: same block set, as seen by flex and by from_flex.
    back = mask.to_flex(Sq, Sk)
    assert tuple(back.seq_lengths) == (Sq, Sk)
    assert torch.equal(flex_union(back)[..., :NB], want)
    assert torch.equal(BlockSparseMask.from_flex(back).to_dense(NB), want)


@pytest.mark.parametrize("B,H,Sq,Sk,bs", [(1, 1, 256, 256, 64), (2, 3, 300, 260, 64), (1, 2, 256, 384, 128)])
def test_from_flex_random_block_pattern(B, H, Sq, Sk, bs):
    MB, NB = math.ceil(Sq / bs), math.ceil(Sk / bs)
    pattern = random_block_map((B, H, MB, NB), 0.4, seed=B * 100 + Sq)
    pattern[..., 0, :] = False  # an empty row

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern[b, h, q_idx // bs, kv_idx // bs]

    bm = create_block_mask(mask_mod, B, H, Sq, Sk, device="cpu", BLOCK_SIZE=bs)
    mask = BlockSparseMask.from_flex(bm)
    got = mask.to_dense(NB)
    assert torch.equal(got, flex_union(bm)[..., :NB])
    assert torch.equal(got, pattern)
    back = mask.to_flex(Sq, Sk, causal=False)
    assert torch.equal(flex_union(back)[..., :NB], pattern)
    assert torch.equal(BlockSparseMask.from_flex(back).to_dense(NB), pattern)


# --------------------------------------------------------------------------- density


@pytest.mark.parametrize("Sq,Sk,bq,bk", [(256, 256, 64, 64), (200, 330, 64, 128), (300, 300, 128, 64)])
@pytest.mark.parametrize("causal", [True, False])
def test_density_direct_count(Sq, Sk, bq, bk, causal):
    MB, NB = math.ceil(Sq / bq), math.ceil(Sk / bk)
    B, H = 2, 3
    bmap = random_block_map((B, H, MB, NB), 0.5, seed=Sq + Sk + bq)
    mask = BlockSparseMask.from_dense(bmap, (bq, bk))
    allowed = causal_blocks(Sq, Sk, bq, bk) if causal else torch.ones(MB, NB, dtype=torch.bool)
    hit = total = 0
    for b in range(B):
        for h in range(H):
            for m in range(MB):
                for n in range(NB):
                    if allowed[m, n]:
                        total += 1
                        hit += int(bmap[b, h, m, n])
    assert mask.density(Sq, Sk, causal=causal) == pytest.approx(hit / total, rel=1e-6)  # computed in float32


def test_density_full_and_single_block():
    nb = 5
    full = BlockSparseMask.from_dense(torch.ones(1, 1, nb, nb, dtype=torch.bool), 64)
    assert full.density(300, 300) == pytest.approx(1.0)
    assert full.density(300, 300, causal=False) == pytest.approx(1.0)
    one = torch.zeros(1, 1, nb, nb, dtype=torch.bool)
    one[0, 0, 4, 2] = True
    m = BlockSparseMask.from_dense(one, 64)
    assert m.density(300, 300) == pytest.approx(1 / 15)       # 15 causal blocks
    assert m.density(300, 300, causal=False) == pytest.approx(1 / 25)


# --------------------------------------------------------------------------- streaming_mask


@pytest.mark.parametrize("Sq,Sk,sink,window,bq,bk", [
    (256, 256, 4, 64, 64, 64),
    (300, 300, 0, 100, 64, 64),
    (200, 450, 37, 1, 64, 128),
    (300, 300, 130, 0, 128, 64),
    (260, 260, 0, 0, 64, 64),
    (130, 401, 64, 64, 64, 64),
    (512, 512, 16, 2000, 64, 64),
    (300, 200, 10, 50, 64, 64),     # Sq > Sk: the first rows see nothing
])
def test_streaming_mask_covers_reference(Sq, Sk, sink, window, bq, bk):
    mask = sparse_attn.streaming_mask(Sq, Sk, sink_tokens=sink, window_tokens=window, block_size=(bq, bk))
    assert mask.block_size == (bq, bk)
    NB = math.ceil(Sk / bk)
    blocks = mask.to_dense(NB)[0, 0]
    elem = ref.streaming_dense_mask(Sq, Sk, sink, window)
    # Expand blocks to elements: every visible pair must be covered.
    q_block = torch.arange(Sq) // bq
    k_block = torch.arange(Sk) // bk
    covered = blocks[q_block][:, k_block]
    assert not (elem & ~covered).any(), "a visible (query, key) pair is not covered"
    # ... and no listed block is empty: the block map is exactly the set of non-empty blocks.
    assert torch.equal(blocks, element_to_block_map(elem, bq, bk))


# --------------------------------------------------------------------------- estimate_block_sparse


@pytest.mark.parametrize("Sq,Sk,bq,bk", [(256, 256, 64, 64), (200, 330, 64, 64), (384, 384, 128, 64)])
def test_estimate_top_k_all_equals_dense_causal(Sq, Sk, bq, bk):
    q, k, v = qkv(1, Sq, Sk, 4, 2, 64, torch.float32, seed=Sq + 1)
    allowed = causal_blocks(Sq, Sk, bq, bk)
    top_k = int(allowed.sum(-1).max())
    for kk in (top_k, top_k + 3):
        mask = sparse_attn.estimate_block_sparse(q, k, block_size=(bq, bk), top_k=kk)
        NB = math.ceil(Sk / bk)
        assert torch.equal(mask.to_dense(NB), allowed.expand(1, 4, -1, -1))
    out = sparse_attn.block_sparse_attention(q, k, v, mask)
    cm = ref.causal_mask(Sq, Sk)
    out_ref = ref.attention(q, k, v, cm)
    out_pt = same_precision_attention(q, k, v, cm)
    assert_close_2x(out, out_ref, out_pt, torch.float32, "top_k >= causal blocks vs dense causal")


@pytest.mark.parametrize("Sq,Sk,bq,bk", [(512, 512, 64, 64), (200, 460, 64, 64), (512, 512, 128, 64),
                                         (300, 512, 64, 128), (320, 200, 64, 64)])
@pytest.mark.parametrize("budget", [{"top_k": 1}, {"top_k": 3}, {"density": 0.01}, {"density": 0.3}])
def test_estimate_forced_blocks_and_causality(Sq, Sk, bq, bk, budget):
    q, k, _ = qkv(2, Sq, Sk, 4, 2, 64, torch.float32, seed=Sq * 3 + Sk)
    mask = sparse_attn.estimate_block_sparse(q, k, block_size=(bq, bk), **budget)
    NB = math.ceil(Sk / bk)
    got = mask.to_dense(NB)                                   # [B, Hq, MB, NB]
    allowed = causal_blocks(Sq, Sk, bq, bk)
    forced = diagonal_blocks(Sq, Sk, bq, bk)
    forced[:, 0] = True
    forced &= allowed
    assert not (got & ~allowed).any(), "a fully future block was selected"
    assert not (forced & ~got).any(), "block 0 or a diagonal block is missing"
    # Per-row count: the budget, capped by the causal blocks, raised to the forced ones.
    n_allowed = allowed.sum(-1)
    n_forced = forced.sum(-1)
    for m in range(allowed.shape[0]):
        if "top_k" in budget:
            want = min(budget["top_k"], int(n_allowed[m]))
        else:
            want = math.ceil(budget["density"] * int(n_allowed[m]))
        want = max(want, int(n_forced[m]))
        assert (got[..., m, :].sum(-1) == want).all(), f"row {m}: {got[..., m, :].sum(-1)} != {want}"
        assert (mask.counts[..., m] == want).all()


def test_estimate_top_k_matches_float64_pooled_scores():
    """GQA (Hq=4, Hkv=2), ragged lengths: the non-forced picks are the top float64 pooled scores."""
    B, Sq, Sk, Hq, Hkv, D, bq, bk = 2, 450, 500, 4, 2, 64, 64, 64
    q, k, _ = qkv(B, Sq, Sk, Hq, Hkv, D, torch.float32, seed=11)
    MB, NB = math.ceil(Sq / bq), math.ceil(Sk / bk)
    allowed = causal_blocks(Sq, Sk, bq, bk)
    forced = diagonal_blocks(Sq, Sk, bq, bk)
    forced[:, 0] = True
    forced &= allowed
    for budget in ({"top_k": 4}, {"density": 0.6}):
        mask = sparse_attn.estimate_block_sparse(q, k, block_size=(bq, bk), **budget)
        got = mask.to_dense(NB)
        for b in range(B):
            for h in range(Hq):
                kh = h // (Hq // Hkv)
                for m in range(MB):
                    qs = q[b, m * bq:(m + 1) * bq, h].double().mean(0)
                    scores = {}
                    for n in range(NB):
                        if allowed[m, n] and not forced[m, n]:
                            scores[n] = float(k[b, n * bk:(n + 1) * bk, kh].double().mean(0) @ qs)
                    n_allowed = int(allowed[m].sum())
                    keep = (min(budget["top_k"], n_allowed) if "top_k" in budget
                            else math.ceil(budget["density"] * n_allowed))
                    rest = max(keep - int(forced[m].sum()), 0)
                    order = sorted(scores, key=lambda n: -scores[n])
                    if 0 < rest < len(order):  # the case must have no near-tie at the cut
                        assert scores[order[rest - 1]] - scores[order[rest]] > 1e-5
                    want = set(order[:rest]) | set(torch.nonzero(forced[m]).flatten().tolist())
                    have = set(torch.nonzero(got[b, h, m]).flatten().tolist())
                    assert have == want, f"{budget} b={b} h={h} m={m}: {sorted(have)} != {sorted(want)}"


def test_estimate_gqa_heads_use_their_kv_head():
    """Query heads 0,1 share KV head 0 and heads 2,3 share KV head 1: making the KV heads
    identical must make the masks of heads h and h+2 identical when q heads are too."""
    q, k, _ = qkv(1, 512, 512, 4, 2, 64, torch.float32, seed=5)
    k2 = k.clone()
    k2[:, :, 1] = k[:, :, 0]
    q2 = q.clone()
    q2[:, :, 2:] = q[:, :, :2]
    mask = sparse_attn.estimate_block_sparse(q2, k2, block_size=64, top_k=3)
    d = mask.to_dense(8)
    assert torch.equal(d[:, 2:], d[:, :2])
    assert not torch.equal(d[:, 0], d[:, 1])  # different q heads do choose differently


def test_estimate_non_causal_selects_any_block():
    q, k, _ = qkv(1, 256, 256, 2, 2, 64, torch.float32, seed=9)
    mask = sparse_attn.estimate_block_sparse(q, k, block_size=64, top_k=4, causal=False)
    assert torch.equal(mask.to_dense(4), torch.ones(1, 2, 4, 4, dtype=torch.bool))
    mask = sparse_attn.estimate_block_sparse(q, k, block_size=64, top_k=2, causal=False)
    d = mask.to_dense(4)
    assert (d.sum(-1) == 2).all() and d[..., 0].all()
    assert d.triu(1).any()  # some future block was picked (nothing forbids it without causality)


@pytest.mark.parametrize("kwargs,match", [
    ({"density": 0.5, "top_k": 2}, "exactly one"),
    ({}, "exactly one"),
    ({"density": 0.0}, "density"),
    ({"density": 1.5}, "density"),
    ({"density": -0.1}, "density"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": -3}, "top_k"),
])
def test_estimate_bad_arguments(kwargs, match):
    q, k, _ = qkv(1, 128, 128, 2, 1, 64, torch.float32, seed=2)
    with pytest.raises(ValueError, match=match):
        sparse_attn.estimate_block_sparse(q, k, block_size=64, **kwargs)


def test_estimate_bad_shapes():
    q, k, _ = qkv(1, 128, 128, 3, 2, 64, torch.float32, seed=2)
    with pytest.raises(ValueError, match="multiple"):
        sparse_attn.estimate_block_sparse(q, k, block_size=64, top_k=1)
    with pytest.raises(ValueError, match=r"\[batch, seqlen, heads, head_dim\]"):
        sparse_attn.estimate_block_sparse(q[0], k[0], block_size=64, top_k=1)
