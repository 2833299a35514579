"""Paged KV cache, Quest bounds and selection, paged decode attention, against the float64
references in sparse_attn.reference."""
import math

import pytest
import torch

import sparse_attn
from sparse_attn import reference as ref
from sparse_attn.paged import (PagedKVCache, paged_decode_attention, quest_decode, quest_scores,
                               select_pages)

from conftest import ATOL, assert_close_2x, assert_lse_close, same_precision_decode


def gen(seed):
    return torch.Generator().manual_seed(seed)


def make_cache(lens, Hkv, D, dtype, ps=16, seed=0, appends=0, spare_pages=4, Sx=None):
    B = len(lens)
    g = gen(seed)
    Smax = max(max(lens) + appends, 1)
    per_seq = -(-Smax // ps) + 1
    cache = PagedKVCache(B * per_seq + spare_pages, ps, Hkv, D, batch_size=B, max_pages_per_seq=per_seq, dtype=dtype)
    S = Sx or max(max(lens), 1)
    k = torch.randn(B, S, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, S, Hkv, D, generator=g).to(dtype)
    cache.prefill(k, v, torch.tensor(lens))
    for _ in range(appends):
        cache.append(torch.randn(B, Hkv, D, generator=g).to(dtype), torch.randn(B, Hkv, D, generator=g).to(dtype))
    return cache


def check_metadata(cache):
    ps = cache.page_size
    for b in range(cache.batch_size):
        k, _ = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        for i in range(-(-k.shape[0] // ps)):
            page = int(cache.page_table[b, i])
            rows = k[i * ps:(i + 1) * ps]
            assert torch.equal(cache.k_max[page], rows.amax(0)), (b, i)
            assert torch.equal(cache.k_min[page], rows.amin(0)), (b, i)


# --------------------------------------------------------------------------- cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ps", [16, 8, 64])
def test_metadata_exact_after_prefill_and_appends(dtype, ps):
    lens = [27, 61, 113, 482, 1110, 2047]
    cache = make_cache(lens, 2, 32, dtype, ps=ps, appends=ps + 3, seed=ps)  # appends cross page ends
    assert cache.seqlens.tolist() == [n + ps + 3 for n in lens]
    check_metadata(cache)


def test_stored_tokens_round_trip():
    g = gen(1)
    cache = PagedKVCache(64, 16, 2, 16, batch_size=2, max_pages_per_seq=20, dtype=torch.float32)
    k = torch.randn(2, 70, 2, 16, generator=g)
    v = torch.randn(2, 70, 2, 16, generator=g)
    cache.prefill(k, v, torch.tensor([70, 33]))
    kn, vn = torch.randn(2, 2, 16, generator=g), torch.randn(2, 2, 16, generator=g)
    cache.append(kn, vn)
    for b, n in enumerate([70, 33]):
        gk, gv = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        assert torch.equal(gk, torch.cat([k[b, :n], kn[b:b + 1]])) and torch.equal(gv, torch.cat([v[b, :n], vn[b:b + 1]]))
    used = set(cache.page_table[cache.page_table >= 0].tolist())
    assert len(used) == cache.num_pages - cache.free_pages  # no page shared, none lost
    cache.free(0)
    assert cache.seqlens.tolist() == [0, 34] and (cache.page_table[0] == -1).all()


def test_full_pool_raises_and_writes_nothing():
    g = gen(3)
    cache = PagedKVCache(3, 16, 1, 16, batch_size=2, max_pages_per_seq=4, dtype=torch.float32)
    k = torch.randn(2, 32, 1, 16, generator=g)
    cache.prefill(k, k, torch.tensor([32, 15]))  # 2 + 1 pages: the pool is full
    x = torch.randn(2, 1, 16, generator=g)
    state = (cache.k_pages.clone(), cache.v_pages.clone(), cache.page_table.clone(), cache.seqlens.clone())
    with pytest.raises(ValueError, match="pool is full"):
        cache.append(x, x)  # sequence 0 (32 tokens) needs a third page, the pool has none
    assert torch.equal(cache.k_pages, state[0]) and torch.equal(cache.v_pages, state[1])
    assert torch.equal(cache.page_table, state[2]) and torch.equal(cache.seqlens, state[3])
    assert cache.free_pages == 0
def test_prefill_longer_than_table_raises_and_keeps_state():
    cache = make_cache([20], 1, 16, torch.float32, seed=4)
    state = (cache.page_table.clone(), cache.seqlens.clone(), cache.free_pages)
    k = torch.randn(1, 10 * cache.page_table.shape[1] * 16, 1, 16)
    with pytest.raises(ValueError, match="max_pages_per_seq"):
        cache.prefill(k, k, torch.tensor([k.shape[1]]))
    assert torch.equal(cache.page_table, state[0]) and torch.equal(cache.seqlens, state[1])
    assert cache.free_pages == state[2]


@pytest.mark.parametrize("kwargs,match", [
    (dict(page_size=12), "power of two"),
    (dict(num_pages=0), "num_pages"),
    (dict(dtype=torch.int32), "dtype"),
])
def test_cache_constructor_errors(kwargs, match):
    args = dict(num_pages=8, page_size=16, heads_kv=2, head_dim=16, batch_size=1, max_pages_per_seq=4)
    args.update(kwargs)
    dtype = args.pop("dtype", torch.float32)
    with pytest.raises(ValueError, match=match):
        PagedKVCache(args.pop("num_pages"), args.pop("page_size"), args.pop("heads_kv"), args.pop("head_dim"),
                     dtype=dtype, **args)


def test_append_shape_and_dtype_errors():
    cache = make_cache([5], 2, 16, torch.float32)
    with pytest.raises(ValueError, match="k"):
        cache.append(torch.randn(1, 3, 16), torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="k"):
        cache.append(torch.randn(1, 2, 16, dtype=torch.bfloat16), torch.randn(1, 2, 16, dtype=torch.bfloat16))


# --------------------------------------------------------------------------- Quest bounds


@pytest.mark.parametrize("group_reduce", ["max", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Hq,Hkv", [(8, 2), (6, 2), (4, 4)])
def test_scores_match_formula(group_reduce, dtype, Hq, Hkv):
    lens = [27, 482, 1110, 0]
    cache = make_cache(lens, Hkv, 64, dtype, appends=3, seed=Hq)
    q = torch.randn(len(lens), Hq, 64, generator=gen(2)).to(dtype)
    got = quest_scores(q, cache, group_reduce=group_reduce)
    want = ref.quest_page_bounds(q, cache.k_pages, cache.page_table, cache.seqlens, group_reduce=group_reduce)
    assert got.dtype == torch.float32 and got.shape == want.shape
    fin = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), fin) and (got[~fin] < 0).all()
    err = (got.double() - want)[fin].abs()
    assert (err <= 1e-5 * want[fin].abs() + 1e-4).all(), err.max()


def test_bound_bounds_every_key():
    """Property: for every query head and every key of a page, q . k <= the head's bound."""
    cache = make_cache([300, 77], 2, 32, torch.float32, appends=2, seed=8)
    q = torch.randn(2, 4, 32, generator=gen(9))
    for b in range(2):
        k, _ = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        for h in range(4):
            g = h // 2
            one = torch.zeros(2, 4, 32)
            one[b, h] = q[b, h]  # only this head: the max over the group is its own bound
            bound = quest_scores(one, cache)[b, g]
            dots = (k[:, g].double() @ q[b, h].double())
            for i in range(-(-k.shape[0] // 16)):
                assert dots[i * 16:(i + 1) * 16].max() <= float(bound[i]) + 1e-4


# --------------------------------------------------------------------------- selection


def check_selection(scores, cache, pages, counts, budget, sink=1, recent=1):
    ps = cache.page_size
    want = ref.quest_select_pages(scores.double(), cache.seqlens, ps, token_budget=budget, sink_pages=sink,
                                  recent_pages=recent)
    assert pages.dtype == torch.int32 and counts.dtype == torch.int32
    for b, per_head in enumerate(want):
        n = -(-int(cache.seqlens[b]) // ps)
        for g, wset in enumerate(per_head):
            c = int(counts[b, g])
            got = pages[b, g, :c].tolist()
            assert got == sorted(set(got)), "pages must be strictly ascending"
            assert len(got) == len(wset), (b, g)
            forced = set(range(min(sink, n))) | set(range(max(n - recent, 0), n))
            assert forced <= set(got)
            # equal up to ties: the chosen free pages score at least as high as any left out
            free_got = [i for i in got if i not in forced]
            left = [i for i in range(n) if i not in got]
            if free_got and left:
                assert min(float(scores[b, g, i]) for i in free_got) >= max(float(scores[b, g, i]) for i in left)


@pytest.mark.parametrize("budget", [16, 64, 200, 5000])
def test_selection_matches_reference(budget):
    cache = make_cache([27, 482, 1110], 2, 32, torch.bfloat16, appends=1, seed=budget)
    q = torch.randn(3, 4, 32, generator=gen(5)).to(torch.bfloat16)
    scores = quest_scores(q, cache)
    pages, counts = select_pages(scores, cache, token_budget=budget)
    check_selection(scores, cache, pages, counts, budget)


def test_budget_covering_sequence_is_dense():
    cache = make_cache([100, 37], 2, 32, torch.float32, seed=6)
    q = torch.randn(2, 4, 32, generator=gen(7))
    pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=10**6)
    assert counts.tolist() == [[7, 7], [3, 3]]
    a = paged_decode_attention(q, cache, pages=pages, counts=counts)
    torch.testing.assert_close(a, paged_decode_attention(q, cache), rtol=0, atol=1e-6)
    torch.testing.assert_close(a.double(), ref.paged_decode_attention(q, cache.k_pages, cache.v_pages,
                                                                      cache.page_table, cache.seqlens),
                               rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("Hq,Hkv,D", [(8, 2, 64), (4, 4, 128), (6, 1, 32)])
@pytest.mark.parametrize("select", [False, True])
def test_decode_matches_reference(dtype, Hq, Hkv, D, select):
    lens = [17, 1, 482, 1110, 0]  # last page with one token, a one-token sequence, an empty one
    cache = make_cache(lens, Hkv, D, dtype, seed=D + Hq)
    q = torch.randn(len(lens), Hq, D, generator=gen(3)).to(dtype)
    pages = counts = None
    if select:
        pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=64)
    out = torch.full_like(q, float("nan"))
    res, lse = paged_decode_attention(q, cache, pages=pages, counts=counts, return_lse=True, out=out, scale=0.2)
    assert res is out
    want, want_lse = ref.paged_decode_attention(q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens,
                                                pages=pages, counts=counts, scale=0.2, return_lse=True)
    pt = same_precision_decode(q, cache, pages, counts, scale=0.2)
    assert_close_2x(out, want, pt, dtype, f"select={select}")
    assert_lse_close(lse, want_lse, f"select={select}")
    assert (out[-1] == 0).all() and torch.isinf(lse[-1]).all()  # the empty sequence: zeros, lse -inf


def test_last_page_with_one_token():
    cache = make_cache([33], 2, 32, torch.float32, seed=11)  # pages of 16, 16, 1
    q = torch.randn(1, 4, 32, generator=gen(12))
    out = paged_decode_attention(q, cache)
    want = ref.paged_decode_attention(q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-5)


def test_long_sequence_many_chunks():
    """More pages than one work chunk (64 pages) per sequence: partial states are merged."""
    cache = make_cache([64 * 16 * 2 + 5, 700], 2, 32, torch.bfloat16, seed=13)
    q = torch.randn(2, 4, 32, generator=gen(14)).to(torch.bfloat16)
    for pages, counts in [(None, None), select_pages(quest_scores(q, cache), cache, token_budget=1600)]:
        out, lse = paged_decode_attention(q, cache, pages=pages, counts=counts, return_lse=True)
        want, want_lse = ref.paged_decode_attention(q, cache.k_pages, cache.v_pages, cache.page_table,
                                                    cache.seqlens, pages=pages, counts=counts, return_lse=True)
        assert_close_2x(out, want, same_precision_decode(q, cache, pages, counts), torch.bfloat16, "chunks")
        assert_lse_close(lse, want_lse, "chunks")


def test_quest_decode_equals_its_steps():
    cache = make_cache([300, 1000], 2, 64, torch.bfloat16, seed=15)
    q = torch.randn(2, 8, 64, generator=gen(16)).to(torch.bfloat16)
    pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=128)
    torch.testing.assert_close(quest_decode(q, cache, token_budget=128),
                               paged_decode_attention(q, cache, pages=pages, counts=counts), rtol=0, atol=0)


def test_selection_errors_name_the_argument():
    cache = make_cache([100, 40], 2, 32, torch.float32, seed=17)
    q = torch.randn(2, 4, 32)
    ok_pages = torch.tensor([[[0, 6], [0, 6]], [[0, 2], [0, 2]]], dtype=torch.int32)
    counts = torch.full((2, 2), 2, dtype=torch.int32)
    paged_decode_attention(q, cache, pages=ok_pages, counts=counts)
    for bad, match in [((0, 0, 1), 7), ((1, 1, 1), 3), ((0, 1, 0), -1)]:
        p = ok_pages.clone()
        p[bad] = match
        with pytest.raises(ValueError, match="pages"):
            paged_decode_attention(q, cache, pages=p, counts=counts)
    unsorted = torch.tensor([[[6, 0], [0, 6]], [[0, 2], [0, 2]]], dtype=torch.int32)
    with pytest.raises(ValueError, match="ascending"):
        paged_decode_attention(q, cache, pages=unsorted, counts=counts)
    with pytest.raises(ValueError, match="counts"):
        paged_decode_attention(q, cache, pages=ok_pages, counts=torch.full((2, 2), 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="q"):
        paged_decode_attention(q.to(torch.bfloat16), cache)
    with pytest.raises(ValueError, match="q"):
        paged_decode_attention(torch.randn(2, 3, 32), cache)


def test_bad_page_table_and_seqlens_are_caught():
    cache = make_cache([40], 1, 16, torch.float32, seed=18)
    q = torch.randn(1, 2, 16)
    out = torch.empty_like(q)
    table = cache.page_table.clone()
    table[0, 1] = cache.num_pages + 5
    with pytest.raises(ValueError, match="page_table"):
        torch.ops.sparse_attn.paged_decode_attention(q, cache.k_pages, cache.v_pages, table, cache.seqlens, None,
                                                     None, out, 0.25)
    seqlens = torch.tensor([10**6], dtype=torch.int32)
    with pytest.raises(ValueError, match="seqlens"):
        torch.ops.sparse_attn.paged_decode_attention(q, cache.k_pages, cache.v_pages, cache.page_table, seqlens,
                                                     None, None, out, 0.25)


def test_opcheck():
    cache = make_cache([40, 7], 2, 16, torch.float32, seed=19)
    q = torch.randn(2, 4, 16)
    pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=16)
    torch.library.opcheck(torch.ops.sparse_attn.quest_scores,
                          (q, cache.k_max, cache.k_min, cache.page_table, cache.seqlens, 16, False))
    torch.library.opcheck(torch.ops.sparse_attn.paged_decode_attention,
                          (q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, pages, counts,
                           torch.empty_like(q), 0.25))
    assert math.isfinite(float(paged_decode_attention(q, cache).abs().max()))
    assert sparse_attn.PagedKVCache is PagedKVCache and ATOL[torch.float32] > 0


def test_raw_op_errors_name_the_argument():
    """Paths the PagedKVCache object never takes, reached through the ops directly."""
    cache = make_cache([40, 7], 2, 16, torch.float32, seed=21)
    k = torch.randn(3, 2, 16)
    write = torch.ops.sparse_attn.paged_kv_write
    ids, slots = torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32)
    before = cache.k_pages.clone()
    with pytest.raises(ValueError, match=r"page_ids\[1\]"):
        write(cache.k_pages, cache.v_pages, cache.k_max, cache.k_min, k, k,
              torch.tensor([0, cache.num_pages, 2], dtype=torch.int32), slots)
    with pytest.raises(ValueError, match=r"slots\[2\]"):
        write(cache.k_pages, cache.v_pages, cache.k_max, cache.k_min, k, k, ids,
              torch.tensor([0, 1, 16], dtype=torch.int32))
    with pytest.raises(ValueError, match="k must have the cache's dtype"):
        write(cache.k_pages, cache.v_pages, cache.k_max, cache.k_min, k.double(), k.double(), ids, slots)
    assert torch.equal(cache.k_pages, before)  # nothing written by a rejected call
    select = torch.ops.sparse_attn.quest_select
    scores = quest_scores(torch.randn(2, 4, 16), cache)
    with pytest.raises(ValueError, match="scores must be float32"):
        select(scores.double(), cache.seqlens, 16, 32, 1, 1)
    with pytest.raises(ValueError, match=r"seqlens\[0\]"):
        select(scores[..., :2].contiguous(), cache.seqlens, 16, 32, 1, 1)  # 3 pages, 2 scores
    with pytest.raises(ValueError, match="token_budget"):
        select(scores, cache.seqlens, 16, 0, 1, 1)
