"""PagedKVCache, Quest scores and page selection, and paged decode attention, against the
float64 references in sparse_attn.reference (sections "paged decode" and "Quest").

Groups: cache metadata (bit-exact), Quest scores (close to float64, and a true bound),
selection (a valid top-k up to ties), decode attention (flash-attention's 2x rule), the
end-to-end quest_decode, bad inputs (ValueError naming the argument), opcheck.
"""
import pytest
import torch

from sparse_attn._ops import ops
from sparse_attn import reference as ref
from sparse_attn.paged import (PagedKVCache, paged_decode_attention, quest_decode, quest_scores,
                               select_pages)

from conftest import assert_close_2x, assert_lse_close, poisoned_like, same_precision_attention

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# --------------------------------------------------------------------------- helpers


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype, g, offset=None):
    x = torch.randn(shape, generator=g)
    if offset is not None:
        x = x + offset
    return x.to(dtype)


def _npages(cache, b):
    return -(-int(cache.seqlens[b]) // cache.page_size)


def make_cache(lens, Hkv, D, dtype, ps=16, seed=0, offset=False):
    """A cache prefilled with fresh random keys/values of the given ragged lengths (two
    spare logical pages per sequence). offset=True shifts each key channel by a random
    constant in [-3, 3], so many pages have channels of one sign (both branches of the
    Quest max matter)."""
    B = len(lens)
    g = _gen(seed)
    max_pages = -(-max(lens) // ps) + 2
    cache = PagedKVCache(B * max_pages + 3, ps, Hkv, D, batch_size=B, max_pages_per_seq=max_pages, dtype=dtype)
    S = max(max(lens), 1)
    off = torch.rand(Hkv, D, generator=g) * 6 - 3 if offset else None
    k = _randn((B, S, Hkv, D), dtype, g, off)
    v = _randn((B, S, Hkv, D), dtype, g)
    cache.prefill(k, v, torch.tensor(lens))
    return cache, g


def check_metadata(cache, what=""):
    """k_max/k_min of every used page == torch.amax/amin of its stored keys, bit for bit."""
    ps = cache.page_size
    for b in range(cache.batch_size):
        k, _ = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        L = k.shape[0]
        nfull = L // ps
        ids = cache.page_table[b, :_npages(cache, b)].long()
        want_max = [k[:nfull * ps].reshape(nfull, ps, *k.shape[1:]).amax(1)]
        want_min = [k[:nfull * ps].reshape(nfull, ps, *k.shape[1:]).amin(1)]
        if L % ps:
            want_max.append(k[nfull * ps:].amax(0, keepdim=True))
            want_min.append(k[nfull * ps:].amin(0, keepdim=True))
        assert torch.equal(cache.k_max[ids], torch.cat(want_max)), f"{what}: k_max of sequence {b} (len {L})"
        assert torch.equal(cache.k_min[ids], torch.cat(want_min)), f"{what}: k_min of sequence {b} (len {L})"


def selection_mask(cache, b, L, Hkv, pages, counts):
    """bool [Hkv, L]: the tokens KV head g of sequence b reads under a selection."""
    mask = torch.ones(Hkv, L, dtype=torch.bool)
    if pages is not None:
        logical = torch.arange(L) // cache.page_size
        for g in range(Hkv):
            mask[g] = torch.isin(logical, pages[b, g, :int(counts[b, g])].long())
    return mask


def same_precision_decode(q, cache, pages=None, counts=None, scale=None):
    """The 2x rule's yardstick: gather K/V and run plain attention in the input dtype."""
    B, Hq, D = q.shape
    Hkv = cache.k_pages.shape[2]
    outs = []
    for b in range(B):
        k, v = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        mask = selection_mask(cache, b, k.shape[0], Hkv, pages, counts).repeat_interleave(Hq // Hkv, 0)
        o = same_precision_attention(q[b][None, None], k[None], v[None], mask[None, :, None, :], scale)
        outs.append(o[0, 0])
    return torch.stack(outs)


def check_decode(q, cache, out, lse, pages=None, counts=None, scale=None, what=""):
    out_ref, lse_ref = ref.paged_decode_attention(q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens,
                                                  pages=pages, counts=counts, scale=scale, return_lse=True)
    out_pt = same_precision_decode(q, cache, pages, counts, scale)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close_2x(out, out_ref, out_pt, q.dtype, what)
    assert_lse_close(lse, lse_ref, what)
    empty = torch.isinf(lse_ref)  # nothing attended: exactly zeros
    assert (out[empty] == 0).all(), f"{what}: rows with nothing to attend are not zero"


def magnitude(q, cache, group_reduce):
    """Quest bound of |q| and |k|: the scale of the float32 rounding error of a bound."""
    return ref.quest_page_bounds(q.abs(), cache.k_pages.abs(), cache.page_table, cache.seqlens,
                                 group_reduce=group_reduce)


# --------------------------------------------------------------------------- cache metadata


def test_extend_ragged_chunks_then_grow():
    """extend() appends per-sequence row spans (chunked prefill with padding); grown() keeps
    page ids, contents and metadata; a too-small pool raises with nothing written."""
    B, Hkv, D, ps = 3, 2, 16, 8
    g = _gen(7)
    cache = PagedKVCache(12, ps, Hkv, D, batch_size=B, max_pages_per_seq=4, dtype=torch.float32)
    k0 = _randn((B, 20, Hkv, D), torch.float32, g)
    cache.prefill(k0, -k0, torch.tensor([20, 5, 0]))
    k1 = _randn((B, 9, Hkv, D), torch.float32, g)
    spans = [(0, 9), (3, 9), (9, 9)]
    assert cache.can_hold([29, 11, 0]) and not cache.can_hold([33, 0, 0])
    cache.extend(k1, -k1, spans)
    assert cache.seqlens.tolist() == [29, 11, 0]
    check_metadata(cache, "after extend")
    want = [torch.cat([k0[0, :20], k1[0]]), torch.cat([k0[1, :5], k1[1, 3:]])]
    for b in range(2):
        gk, gv = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        assert torch.equal(gk, want[b]) and torch.equal(gv, -want[b])
    with pytest.raises(ValueError, match="max_pages_per_seq"):
        cache.extend(k1, k1, [(0, 9), (0, 0), (0, 0)])  # 38 tokens > 4 pages of 8
    assert cache.seqlens.tolist() == [29, 11, 0]
    with pytest.raises(ValueError, match="spans"):
        cache.extend(k1, k1, [(0, 10), (0, 0), (0, 0)])
    big = cache.grown(30, 10)
    assert big.num_pages == 30 and big.free_pages == cache.free_pages + 18
    assert torch.equal(big.page_table[:, :4], cache.page_table) and (big.page_table[:, 4:] == -1).all()
    big.extend(k1, -k1, [(0, 9), (0, 0), (0, 9)])
    assert big.seqlens.tolist() == [38, 11, 9]
    check_metadata(big, "after grown + extend")
    gk, _ = ref.gather_kv(big.k_pages, big.v_pages, big.page_table, big.seqlens, 0)
    assert torch.equal(gk, torch.cat([want[0], k1[0]]))
    with pytest.raises(ValueError, match="at least"):
        cache.grown(4, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extend_batch1_strided_chunks_keep_metadata_exact(dtype):
    """Batch 1 extends write the chunk from a strided view (no gathered copy); chunks that
    end and start inside a page, and long enough for the parallel page buckets."""
    Hkv, D, ps = 3, 64, 16
    g = _gen(11)
    cache = PagedKVCache(80, ps, Hkv, D, batch_size=1, max_pages_per_seq=80, dtype=dtype)
    chunks = [_randn((1, n, Hkv, D), dtype, g) for n in (5, 700, 1, 300)]
    for c in chunks:
        rows = c.shape[1]
        wide = torch.cat([c, c], 1)  # the rows are a view into a larger tensor: strided
        cache.extend(wide, -wide, [(rows, 2 * rows)])
    check_metadata(cache, "batch-1 extends")
    gk, gv = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, 0)
    want = torch.cat([c[0] for c in chunks])
    assert torch.equal(gk, want) and torch.equal(gv, -want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ps", [8, 16, 64])
def test_metadata_bit_exact_after_prefill_and_appends(dtype, ps):
    lens = [27, 61, 113, 482, 1110, 2047]
    B, Hkv, D = len(lens), 2, 32
    g = _gen(100 + ps)
    appends = ps + 2  # every sequence crosses at least one page end
    max_pages = -(-(max(lens) + appends) // ps)
    cache = PagedKVCache(B * max_pages + 2, ps, Hkv, D, batch_size=B, max_pages_per_seq=max_pages, dtype=dtype)
    k = _randn((B, max(lens), Hkv, D), dtype, g)
    v = _randn((B, max(lens), Hkv, D), dtype, g)
    cache.prefill(k, v, torch.tensor(lens))
    assert cache.seqlens.dtype == torch.int32 and cache.seqlens.tolist() == lens
    check_metadata(cache, "after prefill")
    new_k, new_v = [], []
    for step in range(appends):
        kn, vn = _randn((B, Hkv, D), dtype, g), _randn((B, Hkv, D), dtype, g)
        cache.append(kn, vn)
        new_k.append(kn)
        new_v.append(vn)
        if step in (0, appends // 2, appends - 1):
            check_metadata(cache, f"after append {step}")
    assert cache.seqlens.tolist() == [n + appends for n in lens]
    # The stored tokens are the prompt rows followed by the appended rows.
    for b, n in enumerate(lens):
        gk, gv = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        assert torch.equal(gk, torch.cat([k[b, :n], torch.stack([x[b] for x in new_k])]))
        assert torch.equal(gv, torch.cat([v[b, :n], torch.stack([x[b] for x in new_v])]))
    used = cache.page_table[cache.page_table >= 0]
    assert used.unique().numel() == used.numel() == cache.num_pages - cache.free_pages  # no page shared or lost

    # Pages are recycled: a second prefill (other lengths) and a free + append reuse pages
    # whose metadata held the old keys; it must describe only the new ones.
    lens2 = lens[::-1]
    k2 = _randn((B, max(lens), Hkv, D), dtype, g, offset=2.0)
    cache.prefill(k2, _randn((B, max(lens), Hkv, D), dtype, g), torch.tensor(lens2))
    check_metadata(cache, "after re-prefill")
    cache.free(2)
    cache.append(_randn((B, Hkv, D), dtype, g, offset=-5.0), _randn((B, Hkv, D), dtype, g))
    assert cache.seqlens[2] == 1
    check_metadata(cache, "after free + append")


# --------------------------------------------------------------------------- Quest scores

SCORE_CASES = {  # lens, Hq, Hkv, D, page_size
    "gqa4_empty_seq_two_chunks": ([37, 0, 300, 2100], 8, 2, 64, 8),  # > 256 pages: two score chunks
    "mha_one_token_pages": ([129, 16, 1], 4, 4, 32, 16),
    "group3_d40": ([200, 77], 6, 2, 40, 16),  # run-time group size, D not a vector multiple
}


def check_bounds_hold(s, q, cache, mag, group_reduce, what):
    """Property: the bound of a page is >= q_h . k for every key k of the page and every
    query head h of the KV head's group ('max'), or >= sum_h q_h . k ('sum')."""
    B, Hq, D = q.shape
    Hkv, ps = cache.k_pages.shape[2], cache.page_size
    for b in range(B):
        k, _ = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        L, n = k.shape[0], _npages(cache, b)
        if L == 0:
            continue
        qk = torch.einsum("ghd,tgd->ght", q[b].double().reshape(Hkv, Hq // Hkv, D), k.double())  # [Hkv, G, L]
        if group_reduce == "sum":
            qk = qk.sum(1, keepdim=True)
        qk = torch.cat([qk, qk.new_full(qk.shape[:2] + (n * ps - L,), float("-inf"))], -1)
        worst = qk.reshape(Hkv, qk.shape[1], n, ps).amax(-1).amax(1)  # [Hkv, n]: largest q.k per page
        bound = s[b, :, :n].double() + 1e-5 * mag[b, :, :n]
        assert (worst <= bound).all(), f"{what}: bound below a q.k of its page (sequence {b}): " \
                                       f"{(worst - bound).max().item():.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(SCORE_CASES))
@pytest.mark.parametrize("group_reduce", ["max", "sum"])
def test_scores_match_reference_and_bound_every_key(dtype, case, group_reduce):
    lens, Hq, Hkv, D, ps = SCORE_CASES[case]
    cache, g = make_cache(lens, Hkv, D, dtype, ps, seed=len(case) + D, offset=True)
    q = _randn((len(lens), Hq, D), dtype, g)
    s = quest_scores(q, cache, group_reduce=group_reduce)
    assert s.dtype == torch.float32 and s.shape == (len(lens), Hkv, cache.page_table.shape[1])
    r = ref.quest_page_bounds(q, cache.k_pages, cache.page_table, cache.seqlens, group_reduce=group_reduce)
    mag = magnitude(q, cache, group_reduce)
    inf = torch.isinf(r)
    assert torch.equal(torch.isinf(s), inf), f"{case}: -inf pattern differs from the reference"
    assert (s[inf] == float("-inf")).all()
    err = (s.double() - r).abs()[~inf]
    tol = 1e-5 * mag[~inf]
    assert (err <= tol).all(), f"{case}: score error {(err / tol).max().item():.3g} x tolerance"
    check_bounds_hold(s, q, cache, mag, group_reduce, case)


def bounds_by_rule(q, cache, group_reduce):
    """quest_scores by quest_bound's rule (paged.h), in float64 from the stored metadata: a zero
    q_d contributes 0 whatever k_max / k_min hold; otherwise max(q kmax, q kmin), NaN if either
    product is; the heads' sums reduced by max (NaN heads ignored: -inf if all are) or sum."""
    B, Hq, D = q.shape
    Hkv, P = cache.k_max.shape[1], cache.page_table.shape[1]
    out = torch.full((B, Hkv, P), float("-inf"), dtype=torch.float64)
    for b in range(B):
        ids = cache.page_table[b, :_npages(cache, b)].long().cpu()
        mx, mn = (t.cpu()[ids].double()[:, :, None] for t in (cache.k_max, cache.k_min))  # [n, Hkv, 1, D]
        qb = q[b].cpu().double().view(1, Hkv, Hq // Hkv, D)
        per_head = torch.where(qb == 0, 0.0, torch.maximum(qb * mx, qb * mn)).sum(-1)  # [n, Hkv, G]
        red = per_head.sum(-1) if group_reduce == "sum" else \
            torch.where(per_head.isnan(), float("-inf"), per_head).amax(-1)
        out[b, :, :len(ids)] = red.T
    return out


def put_special_metadata(cache, q):
    """+-inf and NaN in the metadata of every used page: in channels 0-7, where q is set to 0,
    every (k_max, k_min) combination of them (each page and head has all eight, so a bound
    that lets 0 x inf through is NaN everywhere); and in channels 8-10, which q uses, a +inf
    k_max, a -inf k_min and a NaN k_min on sequence 0's pages 1-3 (bounds inf or NaN)."""
    inf, nan = float("inf"), float("nan")
    combos = [(inf, None), (None, -inf), (inf, -inf), (inf, inf), (-inf, -inf), (nan, None), (None, nan), (nan, nan)]
    Hkv = cache.k_max.shape[1]
    q[..., :8] = 0
    for b in range(cache.batch_size):
        for j in range(_npages(cache, b)):
            page = int(cache.page_table[b, j])
            for h in range(Hkv):
                for c in range(8):
                    x, n = combos[(c + page + h) % 8]
                    if x is not None:
                        cache.k_max[page, h, c] = x
                    if n is not None:
                        cache.k_min[page, h, c] = n
    p1, p2, p3 = (int(cache.page_table[0, j]) for j in (1, 2, 3))
    cache.k_max[p1, 0, 8] = inf
    cache.k_min[p2, 0, 9] = -inf
    cache.k_min[p3, Hkv - 1, 10] = nan
    return q


def check_scores_by_rule(s, q, cache, group_reduce, what):
    """s: quest_scores of q over cache (a CPU cache; s on any device) == bounds_by_rule: the
    same NaN and +-inf entries, the finite ones within float32 rounding."""
    s = s.cpu()
    r = bounds_by_rule(q, cache, group_reduce)
    for name, f in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        assert torch.equal(f(s), f(r)), f"{what}: {name} entries differ from the rule's"
    fin = torch.isfinite(r)
    tol = 1e-5 * magnitude(q, cache, group_reduce)[fin] + 1e-6
    err = (s.double() - r).abs()[fin]
    assert (err <= tol).all(), f"{what}: error {(err / tol).max().item():.3g} x tolerance"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hq,Hkv,D", [(8, 2, 64), (6, 2, 64), (10, 2, 64), (4, 2, 40), (8, 1, 64)])
@pytest.mark.parametrize("group_reduce", ["max", "sum"])
def test_scores_rule_with_infinite_and_nan_metadata(dtype, Hq, Hkv, D, group_reduce):
    """quest_bound's rule (paged.h) on every CPU path: vector bounds (groups 1-4, 8; bf16 from
    the bf16 dot products, groups of 4 and not), scalar ones (group 5, head_dim 40). A zero q_d
    contributes 0 next to +-inf or NaN metadata; a rule letting 0 x inf = NaN through fails."""
    lens = [70, 33, 0, 130]
    cache, g = make_cache(lens, Hkv, D, dtype, 16, seed=Hq + D)
    q = put_special_metadata(cache, _randn((len(lens), Hq, D), dtype, g))
    s = quest_scores(q, cache, group_reduce=group_reduce)
    check_scores_by_rule(s, q, cache, group_reduce, f"{dtype} G={Hq // Hkv} D={D}")
    fin = torch.isfinite(s)
    assert fin.sum() > 0.8 * (s > -float("inf")).sum()  # mostly finite: channels 0-7 ignored


# --------------------------------------------------------------------------- selection


def check_selection(scores, cache, pages, counts, budget, sink, recent, ref_bounds=None, mag=None):
    """select_pages' output is a valid Quest selection: right shape/dtype/counts, ascending,
    forced pages in, and the same set as reference.quest_select_pages up to ties."""
    B, Hkv, P = scores.shape
    ps = cache.page_size
    bp = -(-budget // ps)
    K = min(max(bp, sink + recent), P)
    assert pages.dtype == torch.int32 and counts.dtype == torch.int32
    assert pages.shape == (B, Hkv, K) and counts.shape == (B, Hkv)
    want = ref.quest_select_pages(scores, cache.seqlens, ps, token_budget=budget, sink_pages=sink,
                                  recent_pages=recent)
    for b in range(B):
        n = _npages(cache, b)
        for g in range(Hkv):
            c = int(counts[b, g])
            chosen = pages[b, g, :c].tolist()
            where = f"(b={b}, g={g}, n={n}, budget={budget}, sink={sink}, recent={recent})"
            assert all(x < y for x, y in zip(chosen, chosen[1:])), f"{where}: pages not ascending: {chosen}"
            assert all(0 <= x < n for x in chosen), f"{where}: page out of range: {chosen}"
            assert (pages[b, g, c:] == 0).all(), f"{where}: entries past counts are not 0"
            assert c == len(want[b][g]), f"{where}: count {c}, reference {len(want[b][g])}"
            chosen = set(chosen)
            forced = set(range(min(sink, n))) | set(range(max(n - recent, 0), n))
            assert forced <= chosen, f"{where}: forced pages {sorted(forced - chosen)} missing"
            if bp >= n:
                assert chosen == set(range(n)), f"{where}: budget covers the sequence but not all pages taken"
            free, rest = sorted(chosen - forced), sorted(set(range(n)) - chosen)
            if free and rest:
                low = scores[b, g, free].min()
                assert low >= scores[b, g, rest].max(), f"{where}: an unchosen page scores higher"
                # Differs from the reference only among pages tied at the threshold.
                for p in chosen ^ want[b][g]:
                    assert scores[b, g, p] == low, f"{where}: page {p} differs from the reference, not a tie"
                if ref_bounds is not None:  # also a top-k of the float64 bounds, up to rounding
                    tol = 1e-5 * mag[b, g, :n].max()
                    assert ref_bounds[b, g, free].min() >= ref_bounds[b, g, rest].max() - tol, where
            else:
                assert chosen == want[b][g], f"{where}: {sorted(chosen)} != {sorted(want[b][g])}"


@pytest.mark.parametrize("budget,sink,recent", [(256, 1, 1), (100, 0, 3), (16, 2, 2), (64, 0, 0), (1, 1, 0),
                                                (40, 4, 1)])
def test_select_pages_matches_reference(budget, sink, recent):
    lens = [0, 5, 129, 700, 1500]
    cache, g = make_cache(lens, 2, 64, torch.bfloat16, 16, seed=budget + sink, offset=True)
    q = _randn((len(lens), 8, 64), torch.bfloat16, g)
    s = quest_scores(q, cache)
    pages, counts = select_pages(s, cache, token_budget=budget, sink_pages=sink, recent_pages=recent)
    r = ref.quest_page_bounds(q, cache.k_pages, cache.page_table, cache.seqlens)
    check_selection(s, cache, pages, counts, budget, sink, recent, r, magnitude(q, cache, "max"))


@pytest.mark.parametrize("budget", [48, 100, 200])
def test_select_pages_with_ties(budget):
    """Hand-made scores with many equal values: any set that differs only among ties."""
    lens = [700, 333, 16, 17]
    cache, g = make_cache(lens, 3, 16, torch.float32, 16, seed=budget)
    P = cache.page_table.shape[1]
    scores = torch.randint(0, 3, (len(lens), 3, P), generator=g).float()
    for b in range(len(lens)):
        scores[b, :, _npages(cache, b):] = float("-inf")
    pages, counts = select_pages(scores, cache, token_budget=budget, sink_pages=1, recent_pages=2)
    check_selection(scores, cache, pages, counts, budget, 1, 2)


def _select_rule(row, n, k, sink, recent):
    """The selection rule spelled out in Python (paged.h select_key): forced pages, then the
    highest scores with NaN ranked as -inf, -0 equal to +0 and ties to the lower page."""
    if k >= n:
        return list(range(n))
    forced = set(range(min(sink, n))) | set(range(max(n - recent, min(sink, n)), n))

    def rank(j):
        x = float(row[j])
        return (-(float("-inf") if x != x else x), j)

    rest = sorted((j for j in range(n) if j not in forced), key=rank)
    return sorted(forced | set(rest[:k - len(forced)]))


@pytest.mark.parametrize("budget,sink,recent", [(16 * 5, 1, 1), (16 * 128, 1, 1), (16 * 700, 2, 3), (16, 0, 1)])
@pytest.mark.parametrize("values", ["ties", "wide"])
def test_select_pages_exact_rule(budget, sink, recent, values):
    """The CPU op's pages are exactly the rule's (ties to the lower page, NaN lowest, -0 == +0),
    on rows of up to 2400 pages whose scores share long runs of equal leading bits."""
    lens = [0, 16, 16 * 40 + 3, 16 * 2400, 16 * 1000 - 5]
    P = -(-max(lens) // 16)
    g = torch.Generator().manual_seed(budget + sink + len(values))
    if values == "ties":  # few distinct values: the selection ends among ties of the top bits
        scores = torch.randint(-2, 3, (len(lens), 2, P), generator=g).float()
        pick = torch.randint(0, 12, scores.shape, generator=g)
        for code, val in ((0, float("nan")), (1, float("inf")), (2, float("-inf")), (3, -0.0)):
            scores[pick == code] = val
        scores[3, 1] = 0.5  # one row of 2400 pages all tied
    else:  # close values: equal exponents, differing low mantissa bits
        scores = 1.0 + torch.randint(0, 1 << 12, (len(lens), 2, P), generator=g).float() * 2.0**-20
        # Ranks that differ only in their low bits, some of them zero: bit patterns
        # 0x40FFFFFF - d, so the forced pages' zero ranks share the candidates' bucket.
        d = torch.randint(0, 300, (P,), generator=g, dtype=torch.int32)
        scores[2, 1] = (torch.full((P,), 0x40FFFFFF, dtype=torch.int32) - d).view(torch.float32)
    seqlens = torch.tensor(lens, dtype=torch.int32)
    pages, counts = ops.quest_select(scores, seqlens, 16, budget, sink, recent)
    k = pages.shape[2]
    for b, n in enumerate(-(-x // 16) for x in lens):
        for h in range(2):
            want = _select_rule(scores[b, h], n, k, sink, recent)
            assert int(counts[b, h]) == len(want), (b, h)
            assert pages[b, h, :len(want)].tolist() == want, (b, h)
            assert not pages[b, h, len(want):].any(), (b, h)


@pytest.mark.parametrize("which", ["+inf on ordinary pages", "-inf on pages of the sequence"])
def test_select_pages_with_infinite_scores(which):
    """Infinite scores must not displace forced pages nor pull in pages past the sequence.
    +inf is what quest_scores returns when a bound overflows float32 (bf16 keys ~1e37);
    -inf can come from hand-made scores. reference.quest_select_pages handles both."""
    lens = [160, 40]  # 10 and 3 pages
    cache, g = make_cache(lens, 1, 16, torch.float32, 16, seed=21)
    P = cache.page_table.shape[1]
    scores = torch.randn(2, 1, P, generator=g)
    scores[0, :, 10:] = float("-inf")
    scores[1, :, 3:] = float("-inf")
    if which.startswith("+inf"):
        scores[0, 0, 3:8] = float("inf")
    else:
        scores[0, 0, :10] = float("-inf")
    pages, counts = select_pages(scores, cache, token_budget=64)  # 4 pages of 10
    check_selection(scores, cache, pages, counts, 64, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("budget", [333, 10**6])
def test_budget_covering_the_sequence_is_dense(dtype, budget):
    lens = [0, 1, 129, 333]
    cache, g = make_cache(lens, 2, 64, dtype, 16, seed=7)
    q = _randn((len(lens), 8, 64), dtype, g)
    s = quest_scores(q, cache)
    pages, counts = select_pages(s, cache, token_budget=budget)
    check_selection(s, cache, pages, counts, budget, 1, 1)
    for b in range(len(lens)):
        n = _npages(cache, b)
        assert (counts[b] == n).all()
        assert (pages[b, :, :n] == torch.arange(n, dtype=torch.int32)).all()
    out_sel, lse_sel = paged_decode_attention(q, cache, pages=pages, counts=counts, return_lse=True)
    out_dense, lse_dense = paged_decode_attention(q, cache, return_lse=True)
    assert torch.equal(out_sel, out_dense) and torch.equal(lse_sel, lse_dense)
    check_decode(q, cache, out_dense, lse_dense, what=f"dense {dtype}")
    check_decode(q, cache, out_sel, lse_sel, pages, counts, what=f"all pages {dtype}")


# --------------------------------------------------------------------------- decode attention

DECODE_CASES = {  # lens, Hq, Hkv, D, page_size
    "gqa4_ragged_empty": ([300, 17, 1025, 0], 8, 2, 64, 16),
    "mha_last_page_one_token": ([129, 1, 64, 200], 4, 4, 32, 16),  # 129 = 8 * 16 + 1; a 1-token sequence
    "group3_d40_ps8": ([33, 97, 250], 6, 2, 40, 8),  # run-time group size, D not a vector multiple
    "long_many_chunks": ([4100, 70], 2, 1, 64, 16),  # 257 pages: several split-KV chunks merged
}


def random_selection(cache, Hkv, g, extra=3):
    """Random ascending page subsets per (sequence, KV head), one head of a non-empty
    sequence with none; entries past counts hold garbage (they must be ignored)."""
    B, P = cache.batch_size, cache.page_table.shape[1]
    K = P + extra
    pages = torch.full((B, Hkv, K), -7, dtype=torch.int32)
    pages[..., 1::2] = 10**6
    counts = torch.zeros(B, Hkv, dtype=torch.int32)
    emptied = False
    for b in range(B):
        n = _npages(cache, b)
        for h in range(Hkv):
            c = 0 if (n > 0 and not emptied) else int(torch.randint(0, n + 1, (1,), generator=g))
            emptied = emptied or n > 0
            chosen = torch.randperm(n, generator=g)[:c].sort().values
            pages[b, h, :c] = chosen.to(torch.int32)
            counts[b, h] = c
    return pages, counts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(DECODE_CASES))
@pytest.mark.parametrize("mode", ["dense", "quest", "random"])
@pytest.mark.parametrize("scale", [None, 0.37])
def test_decode_matches_reference(dtype, case, mode, scale):
    lens, Hq, Hkv, D, ps = DECODE_CASES[case]
    cache, g = make_cache(lens, Hkv, D, dtype, ps, seed=D + Hq + len(mode))
    q = _randn((len(lens), Hq, D), dtype, g)
    pages = counts = None
    if mode == "quest":
        pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=5 * ps, sink_pages=1,
                                     recent_pages=1)
    elif mode == "random":
        pages, counts = random_selection(cache, Hkv, g)
    out = poisoned_like(q)
    res, lse = paged_decode_attention(q, cache, pages=pages, counts=counts, scale=scale, return_lse=True, out=out)
    assert res is out
    assert lse.shape == (len(lens), Hq) and lse.dtype == torch.float32
    check_decode(q, cache, out, lse, pages, counts, scale, f"{case} {mode} {dtype} scale={scale}")
    if 0 in lens:  # empty sequence: zeros and lse -inf
        b = lens.index(0)
        assert (out[b] == 0).all() and (lse[b] == float("-inf")).all()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("lens", [[2000], [300, 5, 1100], [17]])
def test_dense_split_sized_from_the_sequences_not_the_capacity(threads, lens):
    """The fixed split cuts the longest sequence's pages (8 to 64 a chunk, at least twice the
    threads in items), not the cache's capacity: a cache with room for 40x the tokens, every
    chunk size the rule gives for these lengths and thread counts, against the reference."""
    Hq, Hkv, D, ps = 4, 2, 32, 16
    g = torch.Generator().manual_seed(len(lens) * 10 + threads)
    cap = 40 * (-(-max(lens) // ps))
    cache = PagedKVCache(len(lens) * cap, ps, Hkv, D, batch_size=len(lens), max_pages_per_seq=cap,
                         dtype=torch.bfloat16)
    k = torch.randn(len(lens), max(lens), Hkv, D, generator=g).to(torch.bfloat16)
    v = torch.randn(len(lens), max(lens), Hkv, D, generator=g).to(torch.bfloat16)
    cache.prefill(k, v, torch.tensor(lens))
    q = torch.randn(len(lens), Hq, D, generator=g).to(torch.bfloat16)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, lse = paged_decode_attention(q, cache, return_lse=True, out=poisoned_like(q))
    finally:
        torch.set_num_threads(old)
    check_decode(q, cache, out, lse, None, None, None, f"lens={lens} threads={threads}")


@pytest.mark.parametrize("Hq,Hkv", [(128, 2), (130, 2), (128, 1)])
def test_large_gqa_groups_work_or_raise_valueerror(Hq, Hkv):
    """heads_q / heads_kv of 64, 65, 128: correct, or a ValueError naming q (the README's
    rule for bad input), never an internal RuntimeError from the kernel."""
    lens = [33, 50]
    cache, g = make_cache(lens, Hkv, 16, torch.float32, 16, seed=Hq + Hkv)
    q = _randn((2, Hq, 16), torch.float32, g)
    pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=32)
    for p, c in ((None, None), (pages, counts)):
        try:
            out, lse = paged_decode_attention(q, cache, pages=p, counts=c, return_lse=True, out=poisoned_like(q))
        except ValueError as e:
            assert "q" in str(e) or "heads" in str(e), f"ValueError not naming q: {e}"
            continue
        check_decode(q, cache, out, lse, p, c, what=f"Hq={Hq} Hkv={Hkv} selected={p is not None}")


def test_strided_q_and_out_views():
    """q and out as views with a head stride; only out's view is written."""
    lens, Hq, Hkv, D = [150, 31], 4, 2, 32
    cache, g = make_cache(lens, Hkv, D, torch.float32, 16, seed=5)
    q_big = _randn((2, 2 * Hq, D), torch.float32, g)
    q = q_big[:, ::2]
    out_big = torch.full((2, 2 * Hq, D), float("nan"))
    out = out_big[:, 1::2]
    pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=64)
    res, lse = paged_decode_attention(q, cache, pages=pages, counts=counts, return_lse=True, out=out)
    assert res is out and res.data_ptr() == out_big[:, 1::2].data_ptr()
    assert torch.isnan(out_big[:, 0::2]).all(), "wrote outside the out view"
    want, want_lse = paged_decode_attention(q.contiguous(), cache, pages=pages, counts=counts, return_lse=True)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    check_decode(q, cache, out, lse, pages, counts, what="strided")


# --------------------------------------------------------------------------- quest_decode


@pytest.mark.parametrize("group_reduce", ["max", "sum"])
@pytest.mark.parametrize("budget,sink,recent", [(128, 1, 1), (64, 2, 3)])
def test_quest_decode_equals_its_steps(group_reduce, budget, sink, recent):
    lens = [900, 45, 0, 257]
    cache, g = make_cache(lens, 2, 64, torch.bfloat16, 16, seed=budget + sink, offset=True)
    q = _randn((len(lens), 8, 64), torch.bfloat16, g)
    out = poisoned_like(q)
    res, lse = quest_decode(q, cache, token_budget=budget, group_reduce=group_reduce, sink_pages=sink,
                            recent_pages=recent, scale=0.2, return_lse=True, out=out)
    assert res is out
    s = quest_scores(q, cache, group_reduce=group_reduce)
    pages, counts = select_pages(s, cache, token_budget=budget, sink_pages=sink, recent_pages=recent)
    want, want_lse = paged_decode_attention(q, cache, pages=pages, counts=counts, scale=0.2, return_lse=True)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    check_decode(q, cache, out, lse, pages, counts, 0.2, "quest_decode")
    assert not torch.equal(counts, torch.tensor([[-(-n // 16)] * 2 for n in lens], dtype=torch.int32)), \
        "test setup: the budget should make the selection sparse"


# --------------------------------------------------------------------------- bad inputs


def _snapshot(cache):
    return [t.clone() for t in (cache.page_table, cache.seqlens, cache.k_pages, cache.v_pages, cache.k_max,
                                cache.k_min)] + [cache.free_pages]


def _same(a, b):
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


def test_append_to_full_pool_raises_and_writes_nothing():
    g = _gen(11)
    cache = PagedKVCache(3, 16, 2, 16, batch_size=2, max_pages_per_seq=4, dtype=torch.float32)
    k = _randn((2, 32, 2, 16), torch.float32, g)
    cache.prefill(k, _randn((2, 32, 2, 16), torch.float32, g), torch.tensor([32, 15]))  # 2 + 1 pages: pool full
    assert cache.free_pages == 0
    before = _snapshot(cache)
    kn, vn = _randn((2, 2, 16), torch.float32, g), _randn((2, 2, 16), torch.float32, g)
    with pytest.raises(ValueError, match="page pool is full"):
        cache.append(kn, vn)  # sequence 0 needs a new page; sequence 1's token must not be written either
    assert _same(before, _snapshot(cache)), "a failed append changed the cache"
    cache.free(0)  # now it fits
    cache.append(kn, vn)
    assert cache.seqlens.tolist() == [1, 16]
    check_metadata(cache, "after free + append")


def test_prefill_beyond_table_or_pool_raises_and_keeps_state():
    g = _gen(12)
    cache = PagedKVCache(7, 16, 1, 16, batch_size=2, max_pages_per_seq=4, dtype=torch.float32)
    k = _randn((2, 80, 1, 16), torch.float32, g)
    v = _randn((2, 80, 1, 16), torch.float32, g)
    cache.prefill(k, v, torch.tensor([40, 20]))
    q = _randn((2, 2, 16), torch.float32, g)
    out0 = paged_decode_attention(q, cache)
    before = _snapshot(cache)
    with pytest.raises(ValueError, match="max_pages_per_seq"):  # 65 tokens: 5 pages > 4
        cache.prefill(k, v, torch.tensor([65, 3]))
    assert _same(before, _snapshot(cache))
    with pytest.raises(ValueError, match="page pool is full"):  # 4 + 4 pages > 7
        cache.prefill(k, v, torch.tensor([64, 64]))
    assert _same(before, _snapshot(cache))
    assert torch.equal(paged_decode_attention(q, cache), out0)
    with pytest.raises(ValueError, match="seqlens"):  # longer than the tensors given
        cache.prefill(k, v, torch.tensor([81, 3]))
    assert _same(before, _snapshot(cache))
    for _ in range(20):  # the free list survived the rollbacks: 60 and 40 tokens need all 7 pages
        cache.append(_randn((2, 1, 16), torch.float32, g), _randn((2, 1, 16), torch.float32, g))
    check_metadata(cache, "after rollbacks")
    used = cache.page_table[cache.page_table >= 0]
    assert used.unique().numel() == used.numel() == cache.num_pages - cache.free_pages


@pytest.mark.parametrize("page_size", [12, 3, 0, 48])
def test_page_size_must_be_a_power_of_two(page_size):
    with pytest.raises(ValueError, match="page_size"):
        PagedKVCache(8, page_size, 1, 16, batch_size=1, max_pages_per_seq=4, dtype=torch.float32)


def test_token_shape_and_dtype_errors():
    cache, g = make_cache([20, 5], 2, 16, torch.float32)
    k = _randn((2, 8, 2, 16), torch.float32, g)
    with pytest.raises(ValueError, match="k must"):
        cache.prefill(k[..., :8], k, torch.tensor([8, 8]))
    with pytest.raises(ValueError, match="v must"):
        cache.prefill(k, k.to(torch.bfloat16), torch.tensor([8, 8]))
    with pytest.raises(ValueError, match="k must"):
        cache.append(k, k)  # 4-d
    with pytest.raises(ValueError, match="v must"):
        cache.append(k[:, 0], k[:1, 0])  # wrong batch


def test_decode_argument_errors_name_the_argument():
    lens, Hq, Hkv, D = [70, 40, 17], 4, 2, 16
    cache, g = make_cache(lens, Hkv, D, torch.float32, 16, seed=3)
    q = _randn((3, Hq, D), torch.float32, g)
    pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=32)  # K = 2 pages
    assert pages.shape[2] == 2
    cases = []

    def bad(name, match, **kw):
        cases.append((name, match, kw))

    def with_pages(fn):
        p, c = pages.clone(), counts.clone()
        fn(p, c)
        return dict(pages=p, counts=c)

    def put(b, h, i, val):
        return lambda p, c: p[b, h].__setitem__(i, val)

    bad("page >= page count", r"pages\[2, 1, 1\]", **with_pages(put(2, 1, 1, 2)))  # sequence 2 has 2 pages
    bad("page far out", r"pages\[0, 0, 1\]", **with_pages(put(0, 0, 1, 10**6)))
    bad("negative page", r"pages\[1, 0, 0\]", **with_pages(put(1, 0, 0, -1)))
    bad("unsorted", r"pages\[0, 1, 1\].*ascending",
        **with_pages(lambda p, c: p[0, 1].copy_(p[0, 1].flip(0))))
    bad("duplicate", r"pages\[0, 1, 1\].*ascending", **with_pages(lambda p, c: p[0, 1].fill_(p[0, 1, 0])))
    bad("counts > K", r"counts\[1, 1\]", **with_pages(lambda p, c: c.__setitem__((1, 1), 3)))
    bad("negative count", r"counts\[0, 0\]", **with_pages(lambda p, c: c.__setitem__((0, 0), -1)))
    bad("pages int64", "pages must be int32", pages=pages.long(), counts=counts)
    bad("counts int64", "counts must be int32", pages=pages, counts=counts.long())
    bad("pages wrong heads", "pages must be", pages=pages[:, :1].contiguous(), counts=counts)
    bad("counts wrong shape", "counts must be", pages=pages, counts=counts[:, :1].contiguous())
    bad("pages without counts", "pages and counts", pages=pages)
    bad("q dtype", "q must have the cache's dtype", q=q.to(torch.bfloat16))
    bad("q 2-d", "q must be", q=q[0])
    bad("q head_dim", "q must be", q=q[..., :8].contiguous())
    bad("q heads not a multiple", "q must be", q=q[:, :3].contiguous())
    bad("q batch", "q must be", q=q[:2].contiguous())
    bad("out shape", "out must", out=torch.empty(3, Hq, D + 1))
    bad("out dtype", "out must", out=torch.empty(3, Hq, D, dtype=torch.float16))
    bad("scale", "scale", scale=-1.0)
    for name, match, kw in cases:
        args = dict(pages=None, counts=None, q=q, out=None, scale=None)
        args.update(kw)
        qq = args.pop("q")
        with pytest.raises(ValueError, match=match):
            paged_decode_attention(qq, cache, **args)
            pytest.fail(f"{name}: no error")
    # Sanity: the unmodified selection is accepted.
    paged_decode_attention(q, cache, pages=pages, counts=counts)


def test_scores_and_selection_argument_errors():
    cache, g = make_cache([70, 40], 2, 16, torch.float32, 16, seed=4)
    q = _randn((2, 4, 16), torch.float32, g)
    with pytest.raises(ValueError, match="q must be"):
        quest_scores(q[..., :8].contiguous(), cache)
    with pytest.raises(ValueError, match="q must be"):
        quest_scores(q[:, :3].contiguous(), cache)
    with pytest.raises(ValueError, match="group_reduce"):
        quest_scores(q, cache, group_reduce="mean")
    s = quest_scores(q, cache)
    with pytest.raises(ValueError, match="token_budget"):
        select_pages(s, cache, token_budget=0)
    with pytest.raises(ValueError, match="sink_pages"):
        select_pages(s, cache, token_budget=64, sink_pages=-1)


def test_zero_kv_heads_and_metadata_dtype_raise_value_error():
    """heads_kv == 0 (a division by zero in the checks before: SIGFPE) and k_max of a dtype no
    engine reads raise ValueError naming the tensor, also where no kernel would run (batch 0)."""
    ops = torch.ops.sparse_attn
    g = _gen(11)
    q = _randn((2, 4, 16), torch.float32, g)
    table, sl = torch.zeros(2, 3, dtype=torch.int32), torch.tensor([5, 0], dtype=torch.int32)
    no_heads = torch.empty(6, 0, 16)
    for sum_reduce in (False, True):
        with pytest.raises(ValueError, match=r"k_max must have heads_kv >= 1, got shape \[6, 0, 16\]"):
            ops.quest_scores(q, no_heads, no_heads, table, sl, 16, sum_reduce)
    pool = torch.empty(6, 16, 0, 16)
    with pytest.raises(ValueError, match=r"k_pages must have heads_kv >= 1, got shape \[6, 16, 0, 16\]"):
        ops.paged_decode_attention(q, pool, pool, table, sl, None, None, torch.empty_like(q), 0.25)
    meta = torch.randn(6, 2, 16, generator=g)
    for dt in (torch.float64, torch.int32):
        m = meta.to(dt)
        for b in (2, 0):  # batch 0: an empty result, no kernel call
            with pytest.raises(ValueError, match=r"k_max must be float32, bfloat16 or float16, got (Double|Int)"):
                ops.quest_scores(q[:b], m, m, table[:b], sl[:b], 16, False)


ZERO_SIZES = [(0, 2, 16), (4, 2, 0), (0, 1, 0)]  # (heads_q, heads_kv, head_dim): nothing to bound


def zero_size_scores(Hq, Hkv, D, sum_reduce, device="cpu"):
    """quest_scores with no query heads or no channels (lengths 20, 0, 5 in pages of 8)."""
    g = _gen(Hq + D)
    args = (torch.randn(3, Hq, D, generator=g), torch.randn(12, Hkv, D, generator=g),
            torch.randn(12, Hkv, D, generator=g), torch.arange(12, dtype=torch.int32).view(3, 4),
            torch.tensor([20, 0, 5], dtype=torch.int32))
    return torch.ops.sparse_attn.quest_scores(*(t.to(device) for t in args), 8, sum_reduce)


def zero_size_write(Hkv, D, device="cpu"):
    """paged_kv_write of three tokens with no KV heads or no channels: nothing to write."""
    g = _gen(Hkv + D)
    pool = [torch.randn(4, 8, Hkv, D, generator=g) for _ in range(2)] + \
        [torch.randn(4, Hkv, D, generator=g) for _ in range(2)]
    src = [torch.randn(3, Hkv, D, generator=g) for _ in range(2)]
    idx = [torch.tensor([0, 1, 3], dtype=torch.int32), torch.tensor([0, 2, 7], dtype=torch.int32)]
    torch.ops.sparse_attn.paged_kv_write(*(t.to(device) for t in pool + src + idx))


@pytest.mark.parametrize("Hq,Hkv,D", ZERO_SIZES)
@pytest.mark.parametrize("sum_reduce", [False, True])
def test_no_query_heads_or_channels(Hq, Hkv, D, sum_reduce):
    """The CPU results the CUDA glue returns without a launch (test_cuda_paged.py): an empty
    sum is 0 (no channels, or no heads to sum), an empty max -inf; -inf past each sequence;
    a write with no KV heads or channels is accepted and writes nothing."""
    s = zero_size_scores(Hq, Hkv, D, sum_reduce)
    fill = float("-inf") if Hq == 0 and not sum_reduce else 0.0
    in_seq = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)[:, None].expand(3, Hkv, 4)
    assert s.shape == (3, Hkv, 4) and (s[in_seq] == fill).all() and (s[~in_seq] == float("-inf")).all()
    zero_size_write(0, 16)
    zero_size_write(2, 0)


def test_paged_kv_write_rejects_overlapping_outputs():
    """k_pages, v_pages, k_max and k_min are written in place: one sharing memory with itself
    (stride 0) or with another is a ValueError naming both, and nothing is written."""
    ops = torch.ops.sparse_attn
    g = _gen(12)
    P, ps, Hkv, D = 4, 8, 2, 16
    pool = lambda: torch.randn(P, ps, Hkv, D, generator=g)  # noqa: E731
    meta = lambda: torch.randn(P, Hkv, D, generator=g)  # noqa: E731
    k, v = torch.randn(3, Hkv, D, generator=g), torch.randn(3, Hkv, D, generator=g)
    ids, slots = torch.tensor([0, 1, 3], dtype=torch.int32), torch.tensor([0, 5, 7], dtype=torch.int32)
    kp, vp, mx, mn = pool(), pool(), meta(), meta()
    flat = torch.randn(P * ps * Hkv * D + P * Hkv * D + 8, generator=g)
    in_kp = flat[:P * ps * Hkv * D].view(P, ps, Hkv, D)  # a pool and views into its storage
    shifted = flat[8:8 + P * Hkv * D].view(P, Hkv, D)  # overlaps in_kp's start
    two = torch.randn(P + 1, Hkv, D, generator=g)
    cases = [  # (k_pages, v_pages, k_max, k_min), match
        ((pool()[:1].expand(P, ps, Hkv, D), pool()[:1].expand(P, ps, Hkv, D), mx, mn),
         "k_pages has elements that share memory"),
        ((kp, vp, meta()[:, :1].expand(P, Hkv, D), meta()[:, :1].expand(P, Hkv, D)),
         "k_max has elements that share memory"),
        ((kp, kp, mx, mn), "v_pages overlaps k_pages in memory"),
        ((kp, vp.view_as(kp), mx, mn.view_as(mn)), None),  # distinct views of distinct memory: fine
        ((kp, vp, mx, mx), "k_min overlaps k_max in memory"),
        ((kp, vp, mx, mx.view(P, Hkv, D)), "k_min overlaps k_max in memory"),  # a view, same memory
        ((kp, vp, two[:-1], two[1:]), "k_min overlaps k_max in memory"),  # partial overlap
        ((in_kp, vp, shifted, mn), "k_max overlaps k_pages in memory"),
        ((in_kp, vp, mx, shifted), "k_min overlaps k_pages in memory"),
        ((kp, in_kp, mx, shifted), "k_min overlaps v_pages in memory"),
    ]
    for (a, b, c, d), match in cases:
        before = [t.clone() for t in (a, b, c, d)]
        if match is None:
            ops.paged_kv_write(a, b, c, d, k, v, ids, slots)
            assert torch.equal(a[1, 5], k[1]) and torch.equal(b[3, 7], v[2])
            continue
        with pytest.raises(ValueError, match=match):
            ops.paged_kv_write(a, b, c, d, k, v, ids, slots)
        assert all(torch.equal(t, t0) for t, t0 in zip((a, b, c, d), before)), f"{match}: written"


def test_bad_page_table_and_seqlens_are_caught():
    """A used logical page pointing outside the pool, and seqlens beyond the table, are
    rejected by the ops themselves (the cache object cannot produce them)."""
    lens, Hq, Hkv, D = [70, 40], 4, 2, 16
    cache, g = make_cache(lens, Hkv, D, torch.float32, 16, seed=6)
    q = _randn((2, Hq, D), torch.float32, g)
    op = torch.ops.sparse_attn.paged_decode_attention
    P = cache.page_table.shape[1]

    def decode(table, seqlens):
        return op(q, cache.k_pages, cache.v_pages, table, seqlens, None, None, torch.empty_like(q), 0.25)

    def scores(table, seqlens):
        return torch.ops.sparse_attn.quest_scores(q, cache.k_max, cache.k_min, table, seqlens, 16, False)

    for fn in (decode, scores):
        for b, i, val in [(1, 0, cache.num_pages), (0, 4, -1), (1, 2, -5)]:  # logical pages in use
            table = cache.page_table.clone()
            table[b, i] = val
            with pytest.raises(ValueError, match=rf"page_table\[{b}, {i}\]"):
                fn(table, cache.seqlens)
        table = cache.page_table.clone()
        table[1, 3] = 10**6  # past sequence 1's 3 pages: never read, accepted
        fn(table, cache.seqlens)
        for bad_len in (P * 16 + 1, -1):
            seqlens = cache.seqlens.clone()
            seqlens[0] = bad_len
            with pytest.raises(ValueError, match=r"seqlens\[0\]"):
                fn(cache.page_table, seqlens)
    # The same through the Python API with a corrupted cache.
    cache.page_table[0, 1] = -1
    with pytest.raises(ValueError, match=r"page_table\[0, 1\]"):
        paged_decode_attention(q, cache)
    with pytest.raises(ValueError, match=r"page_table\[0, 1\]"):
        quest_scores(q, cache)


# --------------------------------------------------------------------------- opcheck


def test_opcheck():
    cache, g = make_cache([37, 0, 20], 2, 16, torch.float32, 8, seed=9)
    q = _randn((3, 4, 16), torch.float32, g)
    for sum_reduce in (False, True):
        torch.library.opcheck(torch.ops.sparse_attn.quest_scores,
                              (q, cache.k_max, cache.k_min, cache.page_table, cache.seqlens, 8, sum_reduce))
    pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=16)
    for p, c in ((None, None), (pages, counts)):
        torch.library.opcheck(torch.ops.sparse_attn.paged_decode_attention,
                              (q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, p, c,
                               torch.zeros_like(q), 0.3))
    for sum_reduce in (False, True):
        torch.library.opcheck(torch.ops.sparse_attn.quest_decode,
                              (q, cache.k_pages, cache.v_pages, cache.k_max, cache.k_min, cache.page_table,
                               cache.seqlens, sum_reduce, 16, 1, 1, torch.zeros_like(q), 0.3))


def test_quest_decode_op_rejects_metadata_of_another_pool():
    cache, g = make_cache([37, 20], 2, 16, torch.float32, 8, seed=4)
    q = _randn((2, 4, 16), torch.float32, g)
    meta = torch.zeros(cache.k_max.shape[0], 1, 16)  # one KV head where the pool has two
    with pytest.raises(ValueError, match=r"k_max must be \[num_pages, heads_kv, head_dim\]"):
        torch.ops.sparse_attn.quest_decode(q, cache.k_pages, cache.v_pages, meta, meta, cache.page_table,
                                           cache.seqlens, False, 16, 1, 1, torch.empty_like(q), 0.25)


@pytest.mark.parametrize("bad", ["token_budget", "sink_pages", "group_reduce", "q dtype", "q shape"])
def test_quest_decode_errors_name_the_argument(bad):
    cache, g = make_cache([37, 20], 2, 16, torch.float32, 8, seed=3)
    q = _randn((2, 4, 16), torch.float32, g)
    kw = dict(token_budget=16)
    if bad == "token_budget":
        kw["token_budget"] = 0
    elif bad == "sink_pages":
        kw["sink_pages"] = -1
    elif bad == "group_reduce":
        kw["group_reduce"] = "mean"
    elif bad == "q dtype":
        q = q.double()
    else:
        q = q[:, :, :8]
    with pytest.raises(ValueError, match=bad if bad[0] != "q" else "q must"):
        quest_decode(q, cache, **kw)


def test_large_pools_are_huge_page_aligned_zeros(monkeypatch):
    # 2048 pages x 16 x 2 x 128 bf16 = 16 MB per K/V pool: aligned to 2 MB for huge pages;
    # the metadata (1 MB) is below the threshold and allocated plainly.
    cache = PagedKVCache(2048, 16, 2, 128, batch_size=1, max_pages_per_seq=2048)
    for t in (cache.k_pages, cache.v_pages):
        assert t.data_ptr() % (2 << 20) == 0
        assert t.shape == (2048, 16, 2, 128) and not t.any()
    assert not cache.k_max.any() and not cache.k_min.any()
    k = torch.randn(1, 100, 2, 128, dtype=torch.bfloat16)
    cache.prefill(k, k, torch.tensor([100]))
    monkeypatch.setenv("SPARSE_ATTN_HUGE_PAGES", "0")
    plain = PagedKVCache(2048, 16, 2, 128, batch_size=1, max_pages_per_seq=2048)
    plain.prefill(k, k, torch.tensor([100]))
    for a, b in ((cache.k_pages, plain.k_pages), (cache.v_pages, plain.v_pages), (cache.k_max, plain.k_max),
                 (cache.k_min, plain.k_min)):
        assert a.stride() == b.stride() and torch.equal(a, b)


def _metadata_by_rule(keys):
    """The write rule token by token (paged.h write_token_head): the first slot sets, later
    ones replace max (min) only where x > max (x < min) in float32; NaN never replaces."""
    mx, mn = keys[0].clone(), keys[0].clone()
    for x in keys[1:]:
        xf, mxf, mnf = x.float(), mx.float(), mn.float()
        mx = torch.where(xf > mxf, x, mx)
        mn = torch.where(xf < mnf, x, mn)
    return mx, mn


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 40])  # vector path and the scalar fallback (40 % 16 != 0)
def test_metadata_rule_with_signed_zeros_nan_inf(dtype, D):
    g = torch.Generator().manual_seed(D)
    ps, Hkv, S = 16, 2, 300  # >= 256 tokens: the bucketed parallel write
    k = torch.randn(1, S, Hkv, D, generator=g).to(dtype)
    # KV head 0: almost only +-0 and NaN (ties of signed zeros decide max and min); head 1:
    # randn with 30% of +-0, NaN, +-inf.
    special = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf")]).to(dtype)
    idx = torch.randint(0, special.numel(), (1, S, Hkv, D), generator=g)
    idx[:, :, 0] %= 3
    p = torch.tensor([0.95, 0.3]).view(1, 1, Hkv, 1)
    k = torch.where(torch.rand(1, S, Hkv, D, generator=g) < p, special[idx], k)
    cache = PagedKVCache(32, ps, Hkv, D, batch_size=1, max_pages_per_seq=32, dtype=dtype)
    cache.prefill(k[:, :290], k[:, :290], torch.tensor([290]))
    for t in range(290, S):  # appends cross a page end
        cache.append(k[:, t], k[:, t])
    for j in range(-(-S // ps)):
        page = int(cache.page_table[0, j])
        for h in range(Hkv):
            mx, mn = _metadata_by_rule(k[0, j * ps:(j + 1) * ps, h])
            # bit for bit: compare the raw bits (NaN == NaN, -0 != +0)
            bits = torch.int32 if dtype == torch.float32 else torch.int16
            assert torch.equal(cache.k_max[page, h].view(bits), mx.view(bits)), (j, h)
            assert torch.equal(cache.k_min[page, h].view(bits), mn.view(bits)), (j, h)
