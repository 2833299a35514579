"""Stream-K decode suite (CPU): ``paged_decode_attention`` with a :func:`plan_decode` plan
against the same kernel parallelized per (sequence, KV head) and against the machine's read
bandwidth, measured in the same run.

Cases (issue): bf16, pages of 16, head_dim 64 with 3 KV heads / 9 query heads (SmolLM2's
shape) and head_dim 128 with 8 / 32; batch 1 at 32768 tokens and the ragged batch
[32768, 4096, 1024, 256]. The baseline is the same kernel with one work item per
(sequence, KV head) (a plan whose tile is a whole output and one worker per output), which
leaves a thread idle when the outputs do not divide evenly over the threads.
Targets: stream-K >= 60% of the read bandwidth, and >= 1.4x the baseline where it leaves a
thread idle (batch 1, 3 KV heads, 2 threads). Every timed call is cold, as in the decode
suite: the paged cache is flushed from the caches before it (``--cold data``), or twice the
last-level cache is read (``--cold all``); then, as in the decode suite (``--code warm``,
default), an 8 MB projection stand-in runs and the same call once on a cache of one page
per sequence with plans of its own, so the timed call finds its code warm and its data cold.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from .harness import (apply_common_args, cache_evictor, code_warmer, cpu_busy_fraction, data_evictor,
                      one_page_cache_like, projection_standin, read_bandwidth_gbs, text_table, time_interleaved)
from .prefill import _fmt, _ok

BW_TARGET = 0.6
SPEEDUP_TARGET = 1.4


@dataclass
class StreamKConfig:
    shapes: list[tuple[int, int, int]] = field(default_factory=lambda: [(9, 3, 64), (32, 8, 128)])  # Hq, Hkv, D
    batches: list[list[int]] = field(default_factory=lambda: [[32768], [32768, 4096, 1024, 256]])
    page_size: int = 16
    warmup: int = 3
    repeats: int = 15
    cold: str = "data"  # evicted before each timed call: "data" (the paged cache) or "all" (harness)
    code: str = "warm"  # then "warm": the call once on a tiny cache (harness.code_warmer); "cold": not


def quick_config() -> StreamKConfig:
    return StreamKConfig(batches=[[8192]], repeats=7)


def config_from_args(args) -> StreamKConfig:
    cfg = apply_common_args(quick_config() if getattr(args, "quick", False) else StreamKConfig(), args,
                            seqlens_field=None)
    if getattr(args, "cold", None):  # the option is declared by the decode suite (shared parser)
        cfg.cold = args.cold
    if getattr(args, "code", None):
        cfg.code = args.code
    return cfg


def run(cfg: StreamKConfig, log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    import sparse_attn as sa

    bw = read_bandwidth_gbs()
    threads = torch.get_num_threads()
    llc = cache_evictor() if cfg.cold == "all" else None  # decode is timed cold, as in the decode suite
    cold = ("the paged cache flushed from every cache level (clflush, run on the intra-op threads so that "
            "the timed op finds them awake)" if cfg.cold == "data"
            else f"a {llc.nbytes >> 20} MiB read (twice the last-level cache)")
    meta: dict[str, Any] = {"suite": "stream_k", "config": asdict(cfg), "read_bandwidth_gbs": bw, "threads": threads,
                            "other_cpu_busy_start": cpu_busy_fraction(),
                            "timing": "stream-K, per (seq, head) and fixed chunks interleaved call by call, median of "
                                      f"repeats; every timed call cold: before it, {cold}"
                                      + ("; then an 8 MB projection stand-in and the same call on a "
                                         "one-page-per-sequence cache (code warm, data cold)" if cfg.code == "warm" else "; code not warmed")}
    rows = []
    for Hq, Hkv, D in cfg.shapes:
        for lens in cfg.batches:
            B, ps = len(lens), cfg.page_size
            g = torch.Generator().manual_seed(sum(lens) + D)
            cache = sa.PagedKVCache(sum(-(-n // ps) for n in lens) + B, ps, Hkv, D, batch_size=B,
                                    max_pages_per_seq=max(lens) // ps + 2, dtype=torch.bfloat16)
            k = torch.randn(B, max(lens), Hkv, D, generator=g).to(torch.bfloat16)
            cache.prefill(k, k, torch.tensor(lens))
            del k
            q = torch.randn(B, Hq, D, generator=g).to(torch.bfloat16)
            out = torch.empty_like(q)
            evict = llc or data_evictor(cache.k_pages, cache.v_pages, cache.k_max, cache.k_min)
            plan = sa.plan_decode(cache, heads_q=Hq)
            per_head = sa.plan_decode(cache, heads_q=Hq, num_workers=B * Hkv, tile_tokens=1 << 30)
            err = float((sa.paged_decode_attention(q, cache, plan=plan).float()
                         - sa.paged_decode_attention(q, cache, plan=per_head).float()).abs().max())
            warm = _code_warmers(sa, cfg, cache, q)
            t = time_interleaved({
                "stream_k": (lambda: sa.paged_decode_attention(q, cache, out=out, plan=plan), [()]),
                "per_head": (lambda: sa.paged_decode_attention(q, cache, out=out, plan=per_head), [()]),
                "fixed_chunks": (lambda: sa.paged_decode_attention(q, cache, out=out), [()]),
            }, warmup=cfg.warmup, repeats=cfg.repeats, before=evict, warm=warm)
            ms = {n: r["median"] * 1e3 for n, r in t.items()}
            nbytes = sum(lens) * Hkv * D * 2 * 2
            row = {"case": f"Hkv={Hkv} D={D} lens={lens}", "heads_q": Hq, "heads_kv": Hkv, "head_dim": D,
                   "lengths": lens, "threads": threads, "read_bandwidth_gbs": bw,
                   "stream_k_ms": ms["stream_k"], "per_head_ms": ms["per_head"], "fixed_chunks_ms": ms["fixed_chunks"],
                   "stream_k_gbs": nbytes / ms["stream_k"] / 1e6, "max_abs_diff_vs_per_head": err,
                   "plan_tiles": plan.total_tiles, "plan_workers": plan.workers, "timings_s": t}
            row["bw_fraction"] = row["stream_k_gbs"] / bw
            row["speedup_vs_per_head"] = ms["per_head"] / ms["stream_k"]
            row["idle_thread_case"] = (B * Hkv) % threads != 0
            row["bw_ok"] = row["bw_fraction"] >= BW_TARGET
            row["speedup_ok"] = row["speedup_vs_per_head"] >= SPEEDUP_TARGET if row["idle_thread_case"] else None
            if row["idle_thread_case"] and B == 1 and threads == 2:
                row.update(_balance_gain(ms["stream_k"], Hkv, lambda: sa.paged_decode_attention(
                    q, cache, out=out, plan=per_head), evict, warm.get("per_head"), cfg))
            rows.append(row)
            log(f"[stream_k] {row['case']}: stream-K {ms['stream_k']:.2f} ms ({row['bw_fraction']:.0%} bw), "
                f"per (seq, head) {ms['per_head']:.2f} ms, fixed chunks {ms['fixed_chunks']:.2f} ms")
    meta["other_cpu_busy_end"] = cpu_busy_fraction()
    return rows, meta


def _code_warmers(sa, cfg: StreamKConfig, cache, q: torch.Tensor) -> dict:
    """Per timed call, the same call on a cache of one page per sequence (empty if --code cold)."""
    if cfg.code != "warm":
        return {}
    tiny = one_page_cache_like(cache)
    Hq, B, Hkv = q.shape[1], cache.batch_size, cache.k_pages.shape[2]
    t_out = torch.empty_like(q)
    t_plan = sa.plan_decode(tiny, heads_q=Hq)
    t_per_head = sa.plan_decode(tiny, heads_q=Hq, num_workers=B * Hkv, tile_tokens=1 << 30)
    proj = projection_standin()  # the previous layer's projection, as in the decode suite
    return {"stream_k": code_warmer(proj, lambda: sa.paged_decode_attention(q, tiny, out=t_out, plan=t_plan)),
            "per_head": code_warmer(proj, lambda: sa.paged_decode_attention(q, tiny, out=t_out, plan=t_per_head)),
            "fixed_chunks": code_warmer(proj, lambda: sa.paged_decode_attention(q, tiny, out=t_out))}


def _balance_gain(stream_k_ms: float, heads: int, one_thread_call, evict, warm, cfg: StreamKConfig) -> dict:
    """What balance alone can gain over the per-head split at batch 1, measured.

    The same work on one thread (the per-head plan, outputs one after another) takes
    ``t1``; ``s = t1 / stream_k_ms`` is how much two threads speed it up. The per-head split
    runs ``heads // 2`` rounds of two outputs at stream-K's two-thread rate and then the odd
    output alone at the one-thread rate, so balance explains a gain of
    ``2 * (heads // 2) / heads + s / heads``: ``2/3 + s/3`` at 3 heads, at most 4/3 while
    two threads stream no more than twice what one does (``s <= 2``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time_interleaved({"one_thread": (one_thread_call, [()])}, warmup=cfg.warmup, repeats=cfg.repeats,
                             before=evict, warm={"one_thread": warm} if warm else None)
    finally:
        torch.set_num_threads(threads)
    t1 = t["one_thread"]["median"] * 1e3
    scaling = t1 / stream_k_ms
    return {"one_thread_ms": t1, "thread_scaling": scaling,
            "balance_gain": 2 * (heads // 2) / heads + scaling / heads, "one_thread_timings_s": t}


COLUMNS = [
    ("case", lambda r: r["case"]),
    ("stream-K ms", lambda r: _fmt(r["stream_k_ms"], ".2f")),
    ("GB/s", lambda r: _fmt(r["stream_k_gbs"], ".1f")),
    ("of bw", lambda r: _fmt(r["bw_fraction"], ".0%")),
    (f">={BW_TARGET:.0%}", lambda r: _ok(r["bw_ok"])),
    ("per (seq, head) ms", lambda r: _fmt(r["per_head_ms"], ".2f")),
    ("speedup", lambda r: _fmt(r["speedup_vs_per_head"], ".2f")),
    (f">={SPEEDUP_TARGET}", lambda r: _ok(r["speedup_ok"])),
    ("2-thread scaling", lambda r: _fmt(r.get("thread_scaling"), ".2f")),
    ("balance gain", lambda r: _fmt(r.get("balance_gain"), ".2f")),
    ("fixed chunks ms", lambda r: _fmt(r["fixed_chunks_ms"], ".2f")),
]


def format_table(rows: list[dict]) -> str:
    out = text_table(rows, COLUMNS)
    if rows:
        out.append(f"read bandwidth {rows[0]['read_bandwidth_gbs']:.1f} GB/s, {rows[0]['threads']} threads (same run); "
                   f"speedup target applies where per-(seq, head) work leaves a thread idle; there, 2-thread scaling = "
                   f"the per-head work timed on one thread / stream-K, and balance gain = the speedup the per-head "
                   f"split's idle tail explains at that scaling (2/3 + scaling/3 at 3 heads, <= 4/3 for scaling <= 2)")
    return "\n".join(out)


PLOT = {"time_keys": ["stream_k_ms", "per_head_ms", "fixed_chunks_ms"]}
