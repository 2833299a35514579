#!/usr/bin/env python3
"""GPU decode benchmark of the CUDA engine (issue 7): dense paged decode (stream-K, a plan built
once) and the Quest decode step (scores + selection + attention over the selected pages)
against dense SDPA decode (and flash_attn_with_kvcache's split-KV where flash-attn is
installed), at batch 1 to 64 and contexts 8k to 512k tokens, uniform and ragged lengths.

    python bench/gpu_decode.py [--batches 1 4 16 64] [--contexts 8192 32768 131072 524288]
                               [--budgets 2048 4096] [--repeats 20] [--out DIR] [--quick]

32 query / 8 KV heads, head_dim 128, bf16, page 16. Ragged: lengths spread geometrically from
the context down to context / 16. Bytes that must be read: dense, K and V of every token;
Quest, k_max/k_min of every page plus K and V of the tokens of the selected pages. GB/s =
those bytes / time, also as a fraction of the read bandwidth measured in the same run
(torch.sum over a 2 GiB float32 buffer). The L2 cache is flushed (256 MiB written) before
every timed call, so a small cache is not served from L2. Each op call includes what the
API does per call (the host copies that validate page tables and selections). Cases whose
cache does not fit in --mem-fraction of the GPU memory are skipped; SDPA and flash-attn read
padded contiguous K/V copies, skipped if those do not fit too.

The cache is filled directly (random K/V pages, pages of a sequence consecutive, k_max/k_min
by amax/amin over each page's slots, including the unused slots of a last page: still an
upper bound, so the selection is a valid Quest one), not through PagedKVCache.prefill, so
the benchmark does not depend on the write kernel. Writes JSON to --out (default
bench/results/gpu_decode_<date>.json). Needs a CUDA device; nothing here runs in CI.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

import sparse_attn
from gpu_bench import median_ms, parse_args, write_results
from sparse_attn.paged import (PagedKVCache, paged_decode_attention, plan_decode, quest_decode, quest_scores,
                               select_pages)

HQ, HKV, D, PS, DTYPE = 32, 8, 128, 16, torch.bfloat16
ELEM = 2  # bytes of a bf16 element


def read_bandwidth_gbs(flush: torch.Tensor) -> float:
    x = torch.ones(2**29, dtype=torch.float32, device="cuda")  # 2 GiB
    ms = median_ms(lambda: x.sum(), 3, 10, flush)
    del x
    return 2**31 / ms / 1e6


def lengths(B: int, ctx: int, ragged: bool) -> list[int]:
    if not ragged or B == 1:
        return [ctx] * B
    return [max(1, round(ctx * 16 ** (-i / (B - 1)))) for i in range(B)]


def filled_cache(lens: list[int], seed: int) -> PagedKVCache:
    B = len(lens)
    npages = [-(-n // PS) for n in lens]
    cache = PagedKVCache(sum(npages) + 1, PS, HKV, D, batch_size=B, max_pages_per_seq=max(npages), dtype=DTYPE,
                         device="cuda")
    g = torch.Generator(device="cuda").manual_seed(seed)
    chunk = 4096  # pages at a time: bounded temporaries
    for p0 in range(0, cache.num_pages, chunk):
        p1 = min(p0 + chunk, cache.num_pages)
        for t in (cache.k_pages, cache.v_pages):
            t[p0:p1] = torch.randn(t[p0:p1].shape, generator=g, device="cuda", dtype=torch.float32).to(DTYPE)
        keys = cache.k_pages[p0:p1]  # [pages, ps, Hkv, D]
        cache.k_max[p0:p1] = keys.amax(1)
        cache.k_min[p0:p1] = keys.amin(1)
    first = 0
    for b, n in enumerate(npages):
        cache.page_table[b, :n] = torch.arange(first, first + n, dtype=torch.int32, device="cuda")
        cache._owned[b] = list(range(first, first + n))
        first += n
    cache._free = [cache.num_pages - 1]
    cache.seqlens.copy_(torch.tensor(lens, dtype=torch.int32))
    return cache


def selected_bytes(pages: torch.Tensor, counts: torch.Tensor, lens: list[int]) -> int:
    """Bytes of K and V in the selected pages (a last page holds only its tokens)."""
    pages, counts = pages.cpu().long(), counts.cpu().long()
    total = 0
    for b, n in enumerate(lens):
        valid = torch.arange(pages.shape[2])[None, :] < counts[b][:, None]  # [Hkv, K]
        tokens = (n - pages[b] * PS).clamp(0, PS) * valid
        total += int(tokens.sum())
    return total * D * ELEM * 2


def dense_baselines(q: torch.Tensor, cache: PagedKVCache, lens: list[int], free_bytes: int):
    """(SDPA fn, flash-attn fn or None) over padded contiguous K/V copies, or (None, None)."""
    B, S = len(lens), max(lens)
    if 2 * B * S * HKV * D * ELEM > free_bytes:
        return None, None
    t = torch.arange(S, device="cuda")
    pt = cache.page_table.long()
    idx = pt[:, :-(-S // PS)].gather(1, (t // PS)[None].expand(B, S).clamp(max=pt.shape[1] - 1))
    k = cache.k_pages[idx, t % PS]  # [B, S, Hkv, D]
    v = cache.v_pages[idx, t % PS]
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)
    mask = None if len(set(lens)) == 1 else (t[None, :] < torch.tensor(lens, device="cuda")[:, None])[:, None, None]
    q4 = q[:, :, None]

    def sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q4, kt, vt, attn_mask=mask, enable_gqa=True)

    fa = None
    try:
        from flash_attn import flash_attn_with_kvcache

        seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        fa = lambda: flash_attn_with_kvcache(q[:, None], k, v, cache_seqlens=seqlens)  # noqa: E731
    except ImportError:
        pass
    return sdpa, fa


def run_case(lens: list[int], ctx: int, ragged: bool, args, timed, bw: float) -> dict:
    """One (lengths) case: dense paged decode, SDPA (+ flash-attn), Quest per budget."""
    B = len(lens)
    kv_bytes = sum(lens) * HKV * D * ELEM * 2
    cache = filled_cache(lens, seed=B + ctx)
    q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float32).to(DTYPE)
    out = torch.empty_like(q)
    plan = plan_decode(cache, heads_q=HQ)
    ours = timed(lambda: paged_decode_attention(q, cache, plan=plan, out=out))
    sdpa, fa = dense_baselines(q, cache, lens, torch.cuda.mem_get_info()[0] - 2**30)
    sdpa_ms = timed(sdpa) if sdpa else float("nan")
    row = dict(batch=B, context=ctx, ragged=ragged, lens_sum=sum(lens), bytes=kv_bytes,
               dense_ms=ours, dense_gbs=kv_bytes / ours / 1e6, dense_bw_frac=kv_bytes / ours / 1e6 / bw,
               sdpa_ms=sdpa_ms, sdpa_gbs=kv_bytes / sdpa_ms / 1e6, flash_kvcache_ms=timed(fa) if fa else float("nan"),
               dense_speedup_vs_sdpa=sdpa_ms / ours, quest=[])
    del sdpa, fa  # their padded K/V copies
    meta_bytes = sum(-(-n // PS) for n in lens) * HKV * D * ELEM * 2
    for budget in args.budgets:
        s = quest_scores(q, cache)
        pages, counts = select_pages(s, cache, token_budget=budget)
        qbytes = meta_bytes + selected_bytes(pages, counts, lens)
        qplan = plan_decode(cache, heads_q=HQ, pages=pages, counts=counts)
        t = dict(step=timed(lambda: quest_decode(q, cache, token_budget=budget, out=out)),
                 scores=timed(lambda: quest_scores(q, cache)),
                 select=timed(lambda: select_pages(s, cache, token_budget=budget)),
                 attn=timed(lambda: paged_decode_attention(q, cache, pages=pages, counts=counts, plan=qplan, out=out)))
        row["quest"].append(dict(budget=budget, bytes=qbytes, **{f"{k}_ms": v for k, v in t.items()},
                                 step_gbs=qbytes / t["step"] / 1e6, step_bw_frac=qbytes / t["step"] / 1e6 / bw,
                                 speedup_vs_sdpa=sdpa_ms / t["step"]))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 131072, 524288])
    ap.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--mem-fraction", type=float, default=0.4, help="largest cache, as a fraction of GPU memory")
    args = parse_args(ap, "gpu_decode", 20, "batch 1 and 8, contexts 8k and 32k, 5 repeats")
    if args is None:
        return 2
    if args.quick:
        args.batches, args.contexts, args.repeats = [1, 8], [8192, 32768], 5
    total_mem = torch.cuda.get_device_properties(0).total_memory
    flush = torch.empty(2**26, dtype=torch.float32, device="cuda")  # 256 MiB
    bw = read_bandwidth_gbs(flush)
    print(f"read bandwidth {bw:.0f} GB/s", file=sys.stderr)
    rows = []
    for ragged in (False, True):
        for B in args.batches:
            for ctx in args.contexts:
                lens = lengths(B, ctx, ragged)
                kv_bytes = sum(lens) * HKV * D * ELEM * 2
                if kv_bytes > args.mem_fraction * total_mem:
                    print(f"skip B={B} ctx={ctx} ragged={ragged}: {kv_bytes / 2**30:.0f} GiB of K/V", file=sys.stderr)
                    continue
                rows.append(run_case(lens, ctx, ragged, args, lambda fn: median_ms(fn, 3, args.repeats, flush), bw))
                print(json.dumps(rows[-1]))
                torch.cuda.empty_cache()
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, sparse_attn=sparse_attn.__version__,
                dtype=str(DTYPE), heads_q=HQ, heads_kv=HKV, head_dim=D, page_size=PS, read_bandwidth_gbs=bw,
                repeats=args.repeats)
    write_results(args.out, "gpu_decode", meta, rows)
    return 0 if all(math.isfinite(r["dense_ms"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
