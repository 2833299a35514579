"""Property tests of the stream-K partition (csrc/include/sparse_attn/stream_k.h), through
the sparse_attn._C.stream_k_segments binding."""
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_attn import _C

tiles = st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=30)
workers = st.integers(min_value=1, max_value=70)


def check_partition(tiles_per_output, num_workers):
    segs = _C.stream_k_segments(tiles_per_output, num_workers)
    assert len(segs) == num_workers
    total = sum(tiles_per_output)
    offsets = [0]
    for n in tiles_per_output:
        offsets.append(offsets[-1] + n)
    covered = []  # global tiles in worker order
    sizes = []
    hosts = {}
    for w, worker_segs in enumerate(segs):
        size = 0
        for i, (o, b, e, host) in enumerate(worker_segs):
            assert 0 <= o < len(tiles_per_output) and 0 <= b < e <= tiles_per_output[o]
            assert host == (b == 0)
            if not host:
                assert i == 0, "a non-host segment must be the worker's first"
            else:
                assert o not in hosts, "an output has two hosts"
                hosts[o] = w
            covered += list(range(offsets[o] + b, offsets[o] + e))
            size += e - b
        sizes.append(size)
    # ranges cover [0, T) exactly once, in order
    assert covered == list(range(total))
    # sizes differ by at most one, the first T mod W workers holding the extra tile
    q, r = divmod(total, num_workers)
    assert sizes == [q + 1] * r + [q] * (num_workers - r)
    # every non-empty output has exactly one host, and it holds the output's first tile
    assert set(hosts) == {o for o, n in enumerate(tiles_per_output) if n > 0}


@settings(max_examples=300, deadline=None)
@given(tiles, workers)
def test_partition_properties(tiles_per_output, num_workers):
    check_partition(tiles_per_output, num_workers)


def test_more_workers_than_tiles_and_empty():
    check_partition([1, 0, 2], 10)
    check_partition([], 3)
    check_partition([0, 0], 2)
    assert _C.stream_k_segments([0, 3, 0, 2, 5], 3) == [
        [(1, 0, 3, True), (3, 0, 1, True)], [(3, 1, 2, False), (4, 0, 2, True)], [(4, 2, 5, False)]]


# --------------------------------------------------------------------------- stream-K decode

import dataclasses  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_attn import reference as ref  # noqa: E402
from sparse_attn.paged import (PagedKVCache, paged_decode_attention, plan_decode, quest_scores,  # noqa: E402
                               select_pages)

from conftest import assert_close_2x, assert_lse_close, same_precision_decode  # noqa: E402


def small_cache(lens, Hkv, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cache = PagedKVCache(64, 16, Hkv, D, batch_size=len(lens), max_pages_per_seq=8, dtype=dtype)
    k = torch.randn(len(lens), max(lens), Hkv, D, generator=g).to(dtype)
    v = torch.randn(len(lens), max(lens), Hkv, D, generator=g).to(dtype)
    cache.prefill(k, v, torch.tensor(lens))
    return cache, torch.randn(len(lens), 2 * Hkv, D, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("select", [False, True])
def test_stream_k_decode_every_worker_count(dtype, select):
    """Ragged batch with an empty sequence, GQA 2:1, one page per tile: every worker count
    from 1 to T + 3 gives the reference's result, and repeated runs are bit-identical."""
    cache, q = small_cache([37, 0, 16, 5, 70], 2, 32, dtype)
    pages = counts = None
    if select:
        pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=32)
    want, want_lse = ref.paged_decode_attention(q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens,
                                                pages=pages, counts=counts, return_lse=True)
    pt = same_precision_decode(q, cache, pages, counts)
    T = plan_decode(cache, heads_q=4, pages=pages, counts=counts, num_workers=1, tile_tokens=16).total_tiles
    assert T >= 8
    for workers in range(1, T + 4):
        plan = plan_decode(cache, heads_q=4, pages=pages, counts=counts, num_workers=workers, tile_tokens=16)
        out, lse = paged_decode_attention(q, cache, pages=pages, counts=counts, plan=plan, return_lse=True)
        assert_close_2x(out, want, pt, dtype, f"workers={workers}")
        assert_lse_close(lse, want_lse, f"workers={workers}")
        again = paged_decode_attention(q, cache, pages=pages, counts=counts, plan=plan)
        assert torch.equal(out, again), "stream-K merge must be deterministic"
        assert (out[1] == 0).all() and torch.isinf(lse[1]).all()  # the empty sequence


def test_stale_or_mismatched_plan_raises():
    cache, q = small_cache([30, 40], 2, 32, torch.float32, seed=1)
    plan = plan_decode(cache, heads_q=4, num_workers=3, tile_tokens=16)
    paged_decode_attention(q, cache, plan=plan)
    cache.append(torch.randn(2, 2, 32), torch.randn(2, 2, 32))  # 31, 41 tokens: still 2 and 3 pages
    paged_decode_attention(q, cache, plan=plan)
    for _ in range(8):  # 39, 49: the second sequence now needs a 4th page
        cache.append(torch.randn(2, 2, 32), torch.randn(2, 2, 32))
    with pytest.raises(ValueError, match="stale"):
        paged_decode_attention(q, cache, plan=plan)
    pages, counts = select_pages(quest_scores(q, cache), cache, token_budget=16)
    with pytest.raises(ValueError, match="plan"):
        paged_decode_attention(q, cache, pages=pages, counts=counts, plan=plan_decode(cache, heads_q=4))
    with pytest.raises(ValueError, match="heads_q"):
        plan_decode(cache, heads_q=3)


def test_stream_k_opcheck():
    cache, q = small_cache([37, 5], 2, 32, torch.float32, seed=2)
    plan = plan_decode(cache, heads_q=4, num_workers=3, tile_tokens=16)
    torch.library.opcheck(torch.ops.sparse_attn.paged_decode_stream_k,
                          (q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, None, None,
                           torch.empty_like(q), 0.25, plan.offsets, plan.slot_base, plan.workers, plan.tile_pages,
                           plan.ws_state, plan.ws_acc))


# --------------------------------------------------------------------------- simulator

from sparse_attn import schedule  # noqa: E402


def test_simulator_basics():
    r = schedule.simulate([32768, 4096, 1024, 256], num_kv_heads=8, tile_tokens=64)
    assert r["tiles"] == sum(-(-n // 64) for n in [32768, 4096, 1024, 256]) * 8
    for k in ("stream_k", "fixed_split", "no_split"):
        assert 0 < r[k]["efficiency"] <= 1.0 + 1e-9 and r[k]["makespan"] >= r["ideal"] - 1e-9
    # stream-K balances within one tile plus the host's merges (an output of 512 tiles spans
    # at most 16 workers of ~36 tiles); no split is bound by the longest output
    assert r["stream_k"]["makespan"] <= r["ideal"] + 64 * (1 + 16 * schedule.merge_cost_tiles(64))
    assert r["stream_k"]["makespan"] < min(r["fixed_split"]["makespan"], r["no_split"]["makespan"])
    assert r["no_split"]["makespan"] == 32768
    one = schedule.simulate([4096], num_kv_heads=1, tile_tokens=16)
    assert one["fixed_split"]["splits"] >= 1
    assert schedule.simulate([0, 0], num_kv_heads=2)["stream_k"]["efficiency"] == 1.0
    with pytest.raises(ValueError, match="device"):
        schedule.simulate([10], 1, device="TPU")
    rows = schedule.table()
    assert len(rows) == 20 and all(0 < row[k] <= 1.0 + 1e-9 for row in rows for k in schedule.SCHEDULES)


def test_simulator_separate_merge_and_bound():
    # one output of 4096 tiles over 132 workers: 32 tiles for the first 4, 31 for the rest;
    # the host (worker 0) merges the other 131 partials itself, or they are spread over all
    # workers after a barrier
    m = schedule.merge_cost_tiles(16)
    r = schedule.simulate([4096 * 16], num_kv_heads=1, tile_tokens=16)
    assert r["stream_k"]["makespan"] == pytest.approx(16 * (32 + 131 * m))
    assert r["stream_k_separate"]["makespan"] == pytest.approx(16 * (32 + 131 * m / 132))
    # bound: tiles on 132 workers need 131 merges; on fewer, someone holds more tiles
    assert r["bound"]["makespan"] == pytest.approx(16 * max(32, (4096 + 131 * m) / 132))
    assert r["bound"]["makespan"] <= r["stream_k_separate"]["makespan"] <= r["stream_k"]["makespan"]
    # few tiles: 8 outputs of one 16-token tile each; no schedule beats one tile per worker
    small = schedule.simulate([16], num_kv_heads=8)
    assert small["bound"]["makespan"] == 16 and small["bound"]["efficiency"] == pytest.approx(8 / 132)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300_000), min_size=1, max_size=12), st.integers(1, 8), st.sampled_from([None, 16, 128]))
def test_simulator_bound_is_a_lower_bound(lengths, heads, tile):
    r = schedule.simulate(lengths, num_kv_heads=heads, tile_tokens=tile)
    for k in ("stream_k", "stream_k_separate", "fixed_split", "no_split"):
        assert r["bound"]["makespan"] <= r[k]["makespan"] + 1e-6, k
    assert r["bound"]["makespan"] >= r["ideal"] - 1e-6


def test_partition_and_plan_errors():
    with pytest.raises(ValueError, match="workers"):
        _C.stream_k_segments([1, 2], 0)
    with pytest.raises(ValueError, match="negative"):
        _C.stream_k_slots([1, -2], 2)
    cache, q = small_cache([37, 5], 2, 32, torch.float32, seed=3)
    plan = plan_decode(cache, heads_q=4, num_workers=3, tile_tokens=16)
    for field, bad, match in [("ws_acc", plan.ws_acc[:1], "ws_acc"), ("ws_state", plan.ws_state[:1], "ws_state"),
                              ("slot_base", plan.slot_base.clone().fill_(0), "slot_base"),
                              ("offsets", plan.offsets.int(), "offsets")]:
        broken = dataclasses.replace(plan, **{field: bad})
        with pytest.raises(ValueError, match=match):
            paged_decode_attention(q, cache, plan=broken)
    with pytest.raises(ValueError, match="num_workers"):
        plan_decode(cache, heads_q=4, num_workers=0)
