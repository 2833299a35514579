"""Checks of sparse_attn.reference against independent computations (CPU, float64).

The reference is the oracle of every engine test, so here it is checked against things that
do not share its code: torch's scaled_dot_product_attention, explicitly expanded heads, and
plain Python loops that build masks element by element.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from sparse_attn import reference as ref

DT = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, dtype=DT):
    return torch.randn(*shape, generator=g, dtype=dtype)


def bshd(B, S, H, D, g, dtype=DT):
    """[B, S, H, D] view of a [B, H, S, D] tensor: non-contiguous, like HF's transposes."""
    return randn(B, H, S, D, g=g, dtype=dtype).transpose(1, 2)


def loop_attention(q, k, v, allowed, scale):
    """Row-by-row softmax over the allowed keys. allowed(b, h, i, j) -> bool. GQA by h // group."""
    B, Sq, Hq, D = q.shape
    Sk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    group = Hq // Hkv
    out = torch.zeros(B, Sq, Hq, Dv, dtype=DT)
    lse = torch.full((B, Hq, Sq), -math.inf, dtype=DT)
    for b in range(B):
        for h in range(Hq):
            for i in range(Sq):
                keys = [j for j in range(Sk) if allowed(b, h, i, j)]
                if not keys:
                    continue
                s = torch.stack([(q[b, i, h].double() * k[b, j, h // group].double()).sum()
                                 for j in keys]) * scale
                m = s.max()
                w = torch.exp(s - m)
                lse[b, h, i] = m + torch.log(w.sum())
                out[b, i, h] = (w[:, None] * v[b, keys, h // group].double()).sum(0) / w.sum()
    return out, lse


# --------------------------------------------------------------------------- dense


@pytest.mark.parametrize("Sq,Sk", [(1, 1), (7, 7), (33, 33), (5, 29), (1, 40)])
def test_causal_mask_loop(Sq, Sk):
    m = ref.causal_mask(Sq, Sk)
    assert m.dtype == torch.bool and m.shape == (Sq, Sk)
    for i in range(Sq):
        for j in range(Sk):
            assert bool(m[i, j]) == (j <= Sk - Sq + i)


@pytest.mark.parametrize("B,S,H,D", [(2, 37, 3, 16), (1, 64, 2, 64), (3, 1, 1, 8)])
@pytest.mark.parametrize("scale", [None, 0.37])
def test_attention_causal_vs_sdpa_square(B, S, H, D, scale):
    g = gen(1)
    q, k, v = (bshd(B, S, H, D, g) for _ in range(3))
    out = ref.attention(q, k, v, ref.causal_mask(S, S), scale=scale)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True, scale=scale).transpose(1, 2)
    assert out.dtype == DT and out.shape == (B, S, H, D)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("Sq,Sk", [(1, 50), (13, 50), (31, 32)])
def test_attention_causal_vs_sdpa_bottom_right(Sq, Sk):
    g = gen(2)
    B, H, D = 2, 4, 32
    q, k, v = bshd(B, Sq, H, D, g), bshd(B, Sk, H, D, g), bshd(B, Sk, H, D, g)
    # explicit bottom-right mask built independently of ref.causal_mask
    explicit = torch.tensor([[j <= Sk - Sq + i for j in range(Sk)] for i in range(Sq)])
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=explicit).transpose(1, 2)
    out = ref.attention(q, k, v, ref.causal_mask(Sq, Sk))
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


def test_attention_low_precision_inputs_computed_in_float64():
    g = gen(3)
    q, k, v = (bshd(2, 20, 2, 16, g, dtype=torch.bfloat16) for _ in range(3))
    out = ref.attention(q, k, v, ref.causal_mask(20, 20))
    want = F.scaled_dot_product_attention(*(x.double().transpose(1, 2) for x in (q, k, v)),
                                          is_causal=True).transpose(1, 2)
    assert out.dtype == DT
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("Hq,Hkv", [(4, 1), (6, 2), (8, 8)])
def test_attention_gqa_vs_expanded_heads(Hq, Hkv):
    g = gen(4)
    B, Sq, Sk, D = 2, 9, 23, 16
    q, k, v = bshd(B, Sq, Hq, D, g), bshd(B, Sk, Hkv, D, g), bshd(B, Sk, Hkv, D, g)
    group = Hq // Hkv
    # expand by explicit indexing: query head h -> KV head h // group
    kv_of = torch.tensor([h // group for h in range(Hq)])
    k_exp, v_exp = k[:, :, kv_of], v[:, :, kv_of]
    mask = torch.rand(B, Hq, Sq, Sk, generator=g) < 0.6
    out, lse = ref.attention(q, k, v, mask, return_lse=True)
    out_e, lse_e = ref.attention(q, k_exp, v_exp, mask, return_lse=True)
    torch.testing.assert_close(out, out_e, rtol=0, atol=0)
    torch.testing.assert_close(lse, lse_e, rtol=0, atol=0)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k_exp.transpose(1, 2),
                                          v_exp.transpose(1, 2), attn_mask=mask).transpose(1, 2)
    rows = mask.any(-1).permute(0, 2, 1)  # [B, Sq, Hq]: rows with at least one key
    torch.testing.assert_close(out[rows], want[rows], rtol=1e-10, atol=1e-12)


def test_attention_vs_loop_with_value_dim_differing():
    g = gen(5)
    B, Sq, Sk, Hq, Hkv, D, Dv = 2, 5, 11, 4, 2, 8, 12
    q, k, v = bshd(B, Sq, Hq, D, g), bshd(B, Sk, Hkv, D, g), bshd(B, Sk, Hkv, Dv, g)
    mask = torch.rand(B, Hq, Sq, Sk, generator=g) < 0.5
    mask[0, 1, 2] = False
    out, lse = ref.attention(q, k, v, mask, scale=0.21, return_lse=True)
    want, want_lse = loop_attention(q, k, v, lambda b, h, i, j: bool(mask[b, h, i, j]), 0.21)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)


def test_attention_empty_rows_zero_and_minus_inf():
    g = gen(6)
    B, Sq, Sk, H, D = 2, 8, 5, 2, 16
    q, k, v = bshd(B, Sq, H, D, g), bshd(B, Sk, H, D, g), bshd(B, Sk, H, D, g)
    # Sq > Sk with bottom-right causal: the first Sq - Sk rows attend nothing
    out, lse = ref.attention(q, k, v, ref.causal_mask(Sq, Sk), return_lse=True)
    assert torch.equal(out[:, : Sq - Sk], torch.zeros_like(out[:, : Sq - Sk]))
    assert torch.all(lse[:, :, : Sq - Sk] == -math.inf)
    assert torch.isfinite(out).all() and torch.isfinite(lse[:, :, Sq - Sk:]).all()
    # an explicit all-False row, and a fully empty mask
    mask = torch.ones(B, H, Sq, Sk, dtype=torch.bool)
    mask[1, 0, 3] = False
    out, lse = ref.attention(q, k, v, mask, return_lse=True)
    assert torch.equal(out[1, 3, 0], torch.zeros(D, dtype=DT)) and lse[1, 0, 3] == -math.inf
    assert torch.isfinite(lse[0]).all() and torch.isfinite(out).all()
    out, lse = ref.attention(q, k, v, torch.zeros(Sq, Sk, dtype=torch.bool), return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.all(lse == -math.inf)


def test_attention_lse_is_logsumexp_of_scaled_scores():
    g = gen(7)
    B, Sq, Sk, Hq, Hkv, D = 2, 6, 19, 4, 2, 32
    q, k, v = bshd(B, Sq, Hq, D, g), bshd(B, Sk, Hkv, D, g), bshd(B, Sk, Hkv, D, g)
    for scale in (None, 0.05):
        s_eff = D ** -0.5 if scale is None else scale
        _, lse = ref.attention(q, k, v, ref.causal_mask(Sq, Sk), scale=scale, return_lse=True)
        assert lse.shape == (B, Hq, Sq)
        for b in range(B):
            for h in range(Hq):
                for i in range(Sq):
                    last = Sk - Sq + i
                    s = [float((q[b, i, h] * k[b, j, h // 2]).sum()) * s_eff for j in range(last + 1)]
                    m = max(s)
                    want = m + math.log(sum(math.exp(x - m) for x in s))
                    assert abs(float(lse[b, h, i]) - want) < 1e-10


def test_attention_rejects_bad_shapes():
    g = gen(8)
    q, k, v = bshd(1, 4, 3, 8, g), bshd(1, 4, 2, 8, g), bshd(1, 4, 2, 8, g)
    with pytest.raises(ValueError):
        ref.attention(q, k, v)  # 3 query heads, 2 KV heads
    q = bshd(1, 4, 4, 8, g)
    with pytest.raises(ValueError):
        ref.attention(q, k, v, torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError):
        ref.attention(q[0], k, v)


# --------------------------------------------------------------------------- block-sparse


def random_block_lists(Bm, Hm, MB, NK, K, g, density=0.5):
    """Random sorted block lists with garbage (out-of-range, negative, repeated) past the count."""
    counts = torch.zeros(Bm, Hm, MB, dtype=torch.int32)
    indices = torch.randint(-5, 10 ** 6, (Bm, Hm, MB, K), generator=g, dtype=torch.int32)
    for b in range(Bm):
        for h in range(Hm):
            for m in range(MB):
                c = int(torch.binomial(torch.tensor(float(min(K, NK))), torch.tensor(density),
                                       generator=g))
                blocks = torch.randperm(NK, generator=g)[:c].sort().values
                counts[b, h, m] = c
                indices[b, h, m, :c] = blocks.to(torch.int32)
    return counts, indices


def loop_block_mask(counts, indices, block_size, Sq, Sk, causal):
    BQ, BK = block_size
    Bm, Hm = counts.shape[:2]
    mask = torch.zeros(Bm, Hm, Sq, Sk, dtype=torch.bool)
    for b in range(Bm):
        for h in range(Hm):
            for m in range((Sq + BQ - 1) // BQ):
                for c in range(int(counts[b, h, m])):
                    n = int(indices[b, h, m, c])
                    mask[b, h, m * BQ:(m + 1) * BQ, n * BK:(n + 1) * BK] = True
    if causal:
        for i in range(Sq):
            for j in range(Sk):
                if j > Sk - Sq + i:
                    mask[:, :, i, j] = False
    return mask


@pytest.mark.parametrize("Bm,Hm,Sq,Sk,BQ,BK", [
    (2, 3, 50, 50, 16, 16),      # ragged, square
    (1, 2, 37, 70, 8, 16),       # ragged, Sq < Sk, rectangular blocks
    (2, 1, 16, 16, 16, 16),      # a single block
    (1, 1, 5, 100, 64, 32),      # block bigger than Sq
])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_full", [False, True])
def test_block_sparse_dense_mask_vs_loop(Bm, Hm, Sq, Sk, BQ, BK, causal, with_full):
    g = gen(10 + Sq + Sk + BQ)
    NQ, NK = -(-Sq // BQ), -(-Sk // BK)
    MB, K = NQ + 1, NK + 2  # extra rows and slots beyond what is needed
    counts, indices = random_block_lists(Bm, Hm, MB, NK, K, g)
    counts[:, :, NQ:] = 0
    want = loop_block_mask(counts, indices, (BQ, BK), Sq, Sk, causal)
    kw = {}
    if with_full:
        fc, fi = random_block_lists(Bm, Hm, MB, NK, K, g, density=0.3)
        fc[:, :, NQ:] = 0
        kw = dict(full_counts=fc, full_indices=fi)
        want |= loop_block_mask(fc, fi, (BQ, BK), Sq, Sk, causal)
    got = ref.block_sparse_dense_mask(counts, indices, (BQ, BK), Sq, Sk, causal=causal, **kw)
    assert got.dtype == torch.bool and got.shape == (Bm, Hm, Sq, Sk)
    assert torch.equal(got, want)


def test_block_sparse_dense_mask_ignores_garbage_past_counts():
    g = gen(11)
    counts, indices = random_block_lists(1, 2, 4, 4, 6, g)
    a = ref.block_sparse_dense_mask(counts, indices, (8, 8), 30, 30, causal=False)
    garbage = indices.clone()
    past = torch.arange(6)[None, None, None, :] >= counts[..., None]
    garbage[past] = torch.randint(-100, 100, (int(past.sum()),), generator=g, dtype=torch.int32)
    b = ref.block_sparse_dense_mask(counts, garbage, (8, 8), 30, 30, causal=False)
    assert torch.equal(a, b)


def test_block_sparse_rejects_bad_shapes():
    counts = torch.ones(1, 1, 2, dtype=torch.int32)
    indices = torch.zeros(1, 1, 2, 3, dtype=torch.int32)
    with pytest.raises(ValueError):
        ref.block_sparse_dense_mask(counts, indices, (16, 16), 40, 40)  # 3 row blocks needed
    with pytest.raises(ValueError):
        ref.block_sparse_dense_mask(counts[0], indices, (16, 16), 20, 20)
    with pytest.raises(ValueError):
        ref.block_sparse_dense_mask(counts + 3, indices, (16, 16), 20, 20)  # count > K


def test_block_sparse_attention_vs_loop():
    g = gen(12)
    B, Sq, Sk, Hq, Hkv, D, BQ, BK = 2, 21, 27, 4, 2, 8, 8, 4
    q, k, v = bshd(B, Sq, Hq, D, g), bshd(B, Sk, Hkv, D, g), bshd(B, Sk, Hkv, D, g)
    NQ, NK = -(-Sq // BQ), -(-Sk // BK)
    counts, indices = random_block_lists(1, Hq, NQ, NK, NK, g)  # broadcast over batch
    out, lse = ref.block_sparse_attention(q, k, v, counts, indices, (BQ, BK), causal=True,
                                          return_lse=True)

    def allowed(b, h, i, j):
        m = i // BQ
        listed = j // BK in indices[0, h, m, : int(counts[0, h, m])].tolist()
        return listed and j <= Sk - Sq + i

    want, want_lse = loop_attention(q, k, v, allowed, D ** -0.5)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)


def test_block_sparse_all_blocks_equals_dense_causal():
    g = gen(13)
    B, S, H, D, BS = 2, 45, 2, 16, 16
    q, k, v = bshd(B, S, H, D, g), bshd(B, S, H, D, g), bshd(B, S, H, D, g)
    NB = -(-S // BS)
    counts = torch.full((1, 1, NB), NB, dtype=torch.int32)
    indices = torch.arange(NB, dtype=torch.int32).expand(1, 1, NB, NB).contiguous()
    out = ref.block_sparse_attention(q, k, v, counts, indices, (BS, BS))
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True).transpose(1, 2)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("Sq,Sk,sink,window", [
    (40, 40, 4, 8), (40, 40, 0, 1), (7, 60, 3, 10), (30, 30, 0, 100), (20, 20, 25, 2), (5, 5, 0, 0),
])
def test_streaming_mask_vs_loop(Sq, Sk, sink, window):
    got = ref.streaming_dense_mask(Sq, Sk, sink, window)
    assert got.dtype == torch.bool and got.shape == (Sq, Sk)
    for i in range(Sq):
        p = Sk - Sq + i
        for j in range(Sk):
            want = j <= p and (j < sink or p - j < window)
            assert bool(got[i, j]) == want, (i, j)


def test_streaming_attention_vs_loop():
    g = gen(14)
    B, Sq, Sk, Hq, Hkv, D, sink, window = 2, 9, 24, 2, 1, 8, 3, 5
    q, k, v = bshd(B, Sq, Hq, D, g), bshd(B, Sk, Hkv, D, g), bshd(B, Sk, Hkv, D, g)
    out, lse = ref.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=window,
                                       return_lse=True)

    def allowed(b, h, i, j):
        p = Sk - Sq + i
        return j <= p and (j < sink or p - j < window)

    want, want_lse = loop_attention(q, k, v, allowed, D ** -0.5)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- vertical-slash


@pytest.mark.parametrize("main_diagonal", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Sq,Sk", [(33, 33), (10, 41)])
def test_vertical_slash_mask_vs_loop(Sq, Sk, causal, main_diagonal):
    g = gen(15 + Sq)
    B, H, NV, NS = 2, 3, 5, 4
    # include out-of-range values (-3, Sk + 2, huge offsets) that must match nothing
    vertical = torch.randint(-3, Sk + 3, (B, H, NV), generator=g, dtype=torch.int32)
    slash = torch.randint(-4, Sk + 3, (B, H, NS), generator=g, dtype=torch.int32)
    slash[0, 0, 0] = 0
    got = ref.vertical_slash_dense_mask(vertical, slash, Sq, Sk, causal=causal, main_diagonal=main_diagonal)
    assert got.dtype == torch.bool and got.shape == (B, H, Sq, Sk)
    for b in range(B):
        for h in range(H):
            vs, ss = set(vertical[b, h].tolist()), set(slash[b, h].tolist())
            if main_diagonal:
                ss.add(0)
            for i in range(Sq):
                p = Sk - Sq + i
                for j in range(Sk):
                    assert bool(got[b, h, i, j]) == ((j <= p or not causal) and (j in vs or p - j in ss))


def test_vertical_slash_attention_vs_loop():
    g = gen(16)
    B, Sq, Sk, Hq, Hkv, D = 1, 12, 20, 4, 2, 8
    q, k, v = bshd(B, Sq, Hq, D, g), bshd(B, Sk, Hkv, D, g), bshd(B, Sk, Hkv, D, g)
    vertical = torch.randint(0, Sk, (B, Hq, 3), generator=g, dtype=torch.int32)
    slash = torch.randint(0, 6, (B, Hq, 2), generator=g, dtype=torch.int32)
    out, lse = ref.vertical_slash_attention(q, k, v, vertical, slash, return_lse=True)

    def allowed(b, h, i, j):
        p = Sk - Sq + i
        return j <= p and (j in vertical[b, h].tolist() or p - j in slash[b, h].tolist() or p == j)

    want, want_lse = loop_attention(q, k, v, allowed, D ** -0.5)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- paged decode


def make_paged_cache(seqlens, page_size, Hkv, D, g, dtype=DT):
    """Random per-sequence K/V scattered into shuffled pages; returns the cache and the originals."""
    B = len(seqlens)
    npages = [-(-L // page_size) for L in seqlens]
    max_pages = max(max(npages), 1) + 1
    num_pages = sum(npages) + 3
    k_pages = randn(num_pages, page_size, Hkv, D, g=g, dtype=dtype)  # garbage everywhere first
    v_pages = randn(num_pages, page_size, Hkv, D, g=g, dtype=dtype)
    perm = torch.randperm(num_pages, generator=g)
    page_table = torch.randint(0, num_pages, (B, max_pages), generator=g, dtype=torch.int32)
    ks, vs, used = [], [], 0
    for b, L in enumerate(seqlens):
        k = randn(L, Hkv, D, g=g, dtype=dtype)
        v = randn(L, Hkv, D, g=g, dtype=dtype)
        for t in range(L):
            if t % page_size == 0:
                page_table[b, t // page_size] = int(perm[used])
                used += 1
            k_pages[page_table[b, t // page_size], t % page_size] = k[t]
            v_pages[page_table[b, t // page_size], t % page_size] = v[t]
        ks.append(k)
        vs.append(v)
    return k_pages, v_pages, page_table, torch.tensor(seqlens, dtype=torch.int32), ks, vs


def test_gather_kv_roundtrip():
    g = gen(20)
    k_pages, v_pages, table, seqlens, ks, vs = make_paged_cache([1, 17, 33, 16], 16, 2, 8, g)
    for b in range(4):
        k, v = ref.gather_kv(k_pages, v_pages, table, seqlens, b)
        assert torch.equal(k, ks[b]) and torch.equal(v, vs[b])


@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (2, 2), (8, 1)])
def test_paged_decode_vs_attention_on_gathered_kv(Hq, Hkv):
    g = gen(21 + Hq)
    seqlens, ps, D = [1, 17, 33], 16, 32
    k_pages, v_pages, table, sl, ks, vs = make_paged_cache(seqlens, ps, Hkv, D, g)
    q = randn(3, Hq, D, g=g)
    out, lse = ref.paged_decode_attention(q, k_pages, v_pages, table, sl, return_lse=True)
    assert out.dtype == DT and out.shape == (3, Hq, D) and lse.shape == (3, Hq)
    for b in range(3):
        # a single query sitting after every cached token: SDPA with no mask, expanded heads
        kv_of = torch.tensor([h // (Hq // Hkv) for h in range(Hq)])
        kb, vb = ks[b][:, kv_of].transpose(0, 1), vs[b][:, kv_of].transpose(0, 1)
        want = F.scaled_dot_product_attention(q[b][:, None], kb, vb)[:, 0]
        torch.testing.assert_close(out[b], want, rtol=1e-10, atol=1e-12)
        want_lse = torch.logsumexp((q[b][:, None] * kb).sum(-1) * D ** -0.5, -1)
        torch.testing.assert_close(lse[b], want_lse, rtol=1e-10, atol=1e-12)


def test_paged_decode_with_page_selection_vs_loop():
    g = gen(22)
    seqlens, ps, Hq, Hkv, D, K = [1, 17, 33, 40], 8, 4, 2, 16, 5
    k_pages, v_pages, table, sl, ks, vs = make_paged_cache(seqlens, ps, Hkv, D, g)
    q = randn(4, Hq, D, g=g)
    pages = torch.randint(-2, 50, (4, Hkv, K), generator=g, dtype=torch.int32)  # garbage
    counts = torch.zeros(4, Hkv, dtype=torch.int32)
    for b, L in enumerate(seqlens):
        n = -(-L // ps)
        for grp in range(Hkv):
            c = int(torch.randint(0, min(n, K) + 1, (1,), generator=g))
            counts[b, grp] = c
            pages[b, grp, :c] = torch.randperm(n, generator=g)[:c].sort().values.to(torch.int32)
    counts[0, 0] = 0  # an empty selection: zeros and -inf
    out, lse = ref.paged_decode_attention(q, k_pages, v_pages, table, sl, pages=pages,
                                          counts=counts, scale=0.3, return_lse=True)
    for b, L in enumerate(seqlens):
        qb = q[b][None, None]  # [1, 1, Hq, D]

        def allowed(_b, h, _i, j):
            grp = h // (Hq // Hkv)
            return j // ps in pages[b, grp, : int(counts[b, grp])].tolist()

        want, want_lse = loop_attention(qb, ks[b][None], vs[b][None], allowed, 0.3)
        torch.testing.assert_close(out[b], want[0, 0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lse[b], want_lse[0, :, 0], rtol=1e-10, atol=1e-12)
    assert torch.equal(out[0, :2], torch.zeros(2, D, dtype=DT))
    assert torch.all(lse[0, :2] == -math.inf)


def test_paged_decode_all_pages_selected_equals_dense():
    g = gen(23)
    seqlens, ps, Hq, Hkv, D = [5, 17, 33], 16, 4, 2, 8
    k_pages, v_pages, table, sl, _, _ = make_paged_cache(seqlens, ps, Hkv, D, g)
    q = randn(3, Hq, D, g=g)
    pages = torch.arange(3, dtype=torch.int32).expand(3, Hkv, 3).contiguous()
    counts = torch.tensor([[1, 1], [2, 2], [3, 3]], dtype=torch.int32)
    dense = ref.paged_decode_attention(q, k_pages, v_pages, table, sl)
    sparse = ref.paged_decode_attention(q, k_pages, v_pages, table, sl, pages=pages, counts=counts)
    torch.testing.assert_close(sparse, dense, rtol=0, atol=0)


# --------------------------------------------------------------------------- Quest


@pytest.mark.parametrize("group_reduce", ["max", "sum"])
def test_quest_bound_upper_bounds_every_key(group_reduce):
    g = gen(30)
    seqlens, ps, Hq, Hkv, D = [1, 17, 33, 64], 16, 6, 2, 16
    k_pages, v_pages, table, sl, ks, _ = make_paged_cache(seqlens, ps, Hkv, D, g)
    q = randn(4, Hq, D, g=g)
    bounds = ref.quest_page_bounds(q, k_pages, table, sl, group_reduce=group_reduce)
    assert bounds.dtype == DT and bounds.shape == (4, Hkv, table.shape[1])
    G = Hq // Hkv
    for b, L in enumerate(seqlens):
        n = -(-L // ps)
        assert torch.all(bounds[b, :, n:] == -math.inf)
        for grp in range(Hkv):
            for i in range(n):
                keys = ks[b][i * ps:(i + 1) * ps, grp]                     # [n_i, D]
                dots = q[b, grp * G:(grp + 1) * G] @ keys.T                # [G, n_i]
                per_head_best = dots.max(-1).values
                agg = per_head_best.max() if group_reduce == "max" else per_head_best.sum()
                assert float(bounds[b, grp, i]) >= float(agg) - 1e-9


def test_quest_bound_exact_for_single_token_pages():
    # with one token per page kmax == kmin == k, so the bound equals q.k exactly
    g = gen(31)
    seqlens, Hq, Hkv, D = [3, 7], 4, 2, 8
    k_pages, v_pages, table, sl, ks, _ = make_paged_cache(seqlens, 1, Hkv, D, g)
    q = randn(2, Hq, D, g=g)
    bounds = ref.quest_page_bounds(q, k_pages, table, sl)
    for b, L in enumerate(seqlens):
        for grp in range(Hkv):
            for t in range(L):
                dots = [float((q[b, h] * ks[b][t, grp]).sum()) for h in (2 * grp, 2 * grp + 1)]
                assert abs(float(bounds[b, grp, t]) - max(dots)) < 1e-12


def test_quest_bound_formula_loop():
    g = gen(32)
    seqlens, ps, Hq, Hkv, D = [20], 8, 2, 1, 4
    k_pages, _, table, sl, ks, _ = make_paged_cache(seqlens, ps, Hkv, D, g)
    q = randn(1, Hq, D, g=g)
    bounds = ref.quest_page_bounds(q, k_pages, table, sl, group_reduce="sum")
    for i in range(3):
        page = ks[0][i * ps:(i + 1) * ps, 0]
        total = 0.0
        for h in range(Hq):
            for d in range(D):
                hi = max(float(x) for x in page[:, d])
                lo = min(float(x) for x in page[:, d])
                total += max(float(q[0, h, d]) * hi, float(q[0, h, d]) * lo)
        assert abs(float(bounds[0, 0, i]) - total) < 1e-12


def test_quest_bound_zero_query_channel_ignores_infinite_keys():
    # paged.h quest_bound's rule: a zero q_d contributes 0 even next to +-inf keys (0 x inf is
    # NaN), so channel 0 below changes nothing; a q_d != 0 there gives +inf.
    g = gen(33)
    seqlens, ps, Hq, Hkv, D = [20, 9], 8, 4, 2, 8
    k_pages, _, table, sl, _, _ = make_paged_cache(seqlens, ps, Hkv, D, g)
    q = randn(2, Hq, D, g=g)
    q[..., 0] = 0
    want = ref.quest_page_bounds(q[..., 1:], k_pages[..., 1:], table, sl, group_reduce="sum")
    k_pages[:, 0, :, 0], k_pages[:, 1, :, 0] = math.inf, -math.inf  # slots 0 and 1 of every page
    got = ref.quest_page_bounds(q, k_pages, table, sl, group_reduce="sum")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)  # finite: no NaN from 0 x inf
    q[..., 0] = 1
    assert torch.isposinf(ref.quest_page_bounds(q, k_pages, table, sl)[:, :, :2]).all()


def check_selection(sel, scores, n, ps, budget_tokens, sink, recent):
    budget = -(-budget_tokens // ps)
    if budget >= n:
        assert sel == set(range(n))
        return
    forced = set(range(min(sink, n))) | set(range(max(n - recent, 0), n))
    assert forced <= sel and sel <= set(range(n))
    assert len(sel) == max(budget, len(forced))
    extra, rest = sel - forced, set(range(n)) - sel
    if extra and rest:  # ties allowed: every picked page scores >= every unpicked one
        assert min(float(scores[i]) for i in extra) >= max(float(scores[i]) for i in rest)


@pytest.mark.parametrize("budget_tokens", [1, 16, 40, 64, 100, 1000])
@pytest.mark.parametrize("sink,recent", [(1, 1), (0, 0), (2, 3)])
def test_quest_select_pages(budget_tokens, sink, recent):
    g = gen(33)
    seqlens, ps, Hkv, max_pages = [1, 17, 33, 100, 160], 16, 3, 12
    scores = randn(len(seqlens), Hkv, max_pages, g=g)
    scores[1, 0, :] = 0.5  # all tied
    sel = ref.quest_select_pages(scores, torch.tensor(seqlens, dtype=torch.int32), ps,
                                 token_budget=budget_tokens, sink_pages=sink, recent_pages=recent)
    assert len(sel) == len(seqlens) and all(len(s) == Hkv for s in sel)
    for b, L in enumerate(seqlens):
        n = -(-L // ps)
        for grp in range(Hkv):
            check_selection(sel[b][grp], scores[b, grp], n, ps, budget_tokens, sink, recent)


def test_quest_select_pages_picks_top_scores():
    scores = torch.tensor([[[9.0, 1.0, 8.0, 3.0, 7.0, 2.0, 0.5, 4.0]]], dtype=DT)
    sel = ref.quest_select_pages(scores, torch.tensor([128]), 16, token_budget=64)
    assert sel == [[{0, 7, 2, 4}]]  # sink 0, recent 7, then pages 2 (8.0) and 4 (7.0)
    sel = ref.quest_select_pages(scores, torch.tensor([128]), 16, token_budget=128)
    assert sel == [[set(range(8))]]
