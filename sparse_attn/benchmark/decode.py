"""Decode suite: paged KV cache, dense paged decode and Quest decode against dense SDPA decode.

Per (batch, context): a :class:`sparse_attn.PagedKVCache` (page 16, bf16, 32 query / 8 KV
heads, head_dim 128) filled by ``prefill`` with randn keys/values, the same K/V as
contiguous ``[B, S, H_kv, D]`` tensors for SDPA, and one randn query token per sequence.
The machine's read bandwidth is measured in the same run (:func:`harness.read_bandwidth_gbs`).

Timed, in turns (:func:`harness.time_interleaved`, median of repeats), each call cold: before
every timed call the KV data (the paged cache with its metadata, and SDPA's contiguous K/V)
is flushed from every cache level (``--cold data``, :func:`harness.data_evictor`), as for a
layer's KV cache inside a decode step, while code and small tensors stay cached (the flush
runs on the intra-op threads, so the timed op does not pay for waking them); on a CPU
with a 480 MB last-level cache a 128 MB KV cache would otherwise be read from it.
``--cold all`` reads twice the last-level cache instead (:func:`harness.cache_evictor`),
which evicts the code too. Then (``--code warm``, the default) a stand-in for the
projection that precedes attention runs (an 8 MB bf16 matrix-vector product of its own,
:func:`harness.projection_standin`) and the same op once on a cache of one page per sequence
(:func:`harness.code_warmer`): in a model the op ran one layer earlier, so its code path is
warm while its data is not; a ~40 ms eviction left the first op call after it ~0.12 ms
slower, which at batch 1 is a tenth of a Quest step, and without a multi-MB op in between
half the calls of B=1 dense decode ran 30% slower. Each Quest step is also timed without
this warm-up (``quest_code_cold_ms``), for comparison:

* ``sdpa``: ``F.scaled_dot_product_attention(q[:, :, None], k.transpose(1, 2), v.transpose(1, 2),
  enable_gqa=True)``, dense decode over the contiguous cache;
* ``dense``: ``paged_decode_attention(q, cache)`` over every page;
* per token budget: ``quest``: ``quest_decode(q, cache, token_budget=...)``, the whole step
  (bounds, selection, attention), and its parts ``scores``, ``select``, ``attn``.

Bytes: dense reads K and V of every token (``B * S * H_kv * D * 2 * 2``); Quest must read the
metadata of every page (``2 * pages * H_kv * D * 2``) plus K and V of the selected pages. The
floor is bytes / read bandwidth. Targets (issue): dense >= 60% of the read bandwidth; Quest at
32768 tokens with budget 2048 >= 15x faster than SDPA decode and >= 50% of its floor.
"""
from __future__ import annotations

import gc
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .harness import (apply_common_args, cache_evictor, code_warmer, cpu_busy_fraction, data_evictor,
                      one_page_cache_like, projection_standin, read_bandwidth_gbs, text_table, time_fn,
                      time_interleaved)
from .prefill import NOISY_SPREAD, _fmt, _ok

DENSE_BW_TARGET = 0.6
QUEST_SPEEDUP_TARGET = 15.0
QUEST_FLOOR_TARGET = 0.5


@dataclass
class DecodeConfig:
    batches: list[int] = field(default_factory=lambda: [1, 8])
    contexts: list[int] = field(default_factory=lambda: [8192, 32768])
    budgets: list[int] = field(default_factory=lambda: [1024, 2048])
    heads_q: int = 32
    heads_kv: int = 8
    head_dim: int = 128
    page_size: int = 16
    dtype: str = "bfloat16"
    warmup: int = 3
    repeats: int = 15
    seed: int = 0
    cold: str = "data"  # what is evicted before each timed call: "data" (the KV tensors) or "all"
    code: str = "warm"  # after the eviction: "warm" runs the op on a tiny input (harness.code_warmer), "cold" not


def quick_config() -> DecodeConfig:
    return DecodeConfig(batches=[1], contexts=[8192], budgets=[1024], repeats=7)


def add_arguments(parser) -> None:
    parser.add_argument("--dec-batches", type=int, nargs="+", help="decode: batch sizes (default 1 8)")
    parser.add_argument("--dec-budgets", type=int, nargs="+", help="decode: Quest token budgets (default 1024 2048)")
    parser.add_argument("--cold", choices=["data", "all"],
                        help="decode / stream_k: before each timed call evict the KV tensors from the caches "
                             "(data, default) or read twice the last-level cache (all, code evicted too)")
    parser.add_argument("--code", choices=["warm", "cold"],
                        help="decode / stream_k: after the eviction run the timed op once on a tiny input (warm, "
                             "default: as in a model, where the op ran one layer earlier) or not (cold)")


def config_from_args(args) -> DecodeConfig:
    cfg = quick_config() if getattr(args, "quick", False) else DecodeConfig()
    apply_common_args(cfg, args, seqlens_field="contexts")
    if getattr(args, "dec_batches", None):
        cfg.batches = list(args.dec_batches)
    if getattr(args, "dec_budgets", None):
        cfg.budgets = list(args.dec_budgets)
    if getattr(args, "cold", None):
        cfg.cold = args.cold
    if getattr(args, "code", None):
        cfg.code = args.code
    return cfg


def run(cfg: DecodeConfig, log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    import sparse_attn as sa

    bw = read_bandwidth_gbs()
    log(f"[decode] read bandwidth {bw:.1f} GB/s")
    llc = cache_evictor() if cfg.cold == "all" else None
    cold = ("the KV tensors (paged cache, metadata, SDPA's K/V) flushed from every cache level (clflush, run "
            "on the intra-op threads so that the timed op finds them awake, as after a previous layer's ops)"
            if cfg.cold == "data" else f"a {llc.nbytes >> 20} MiB read (twice the last-level cache)")
    meta: dict[str, Any] = {"suite": "decode", "config": asdict(cfg), "read_bandwidth_gbs": bw,
                            "other_cpu_busy_start": cpu_busy_fraction(),
                            "timing": "sdpa, dense and quest steps interleaved call by call, median of repeats; "
                                      f"every timed call cold: before it, {cold}; "
                                      + ("then an 8 MB projection stand-in and the same op on a tiny cache of its "
                                         "own (code warm, data cold, as in a model's decode step); "
                                         "quest_code_cold_ms: the step without them"
                                         if cfg.code == "warm" else "code not warmed"),
                            "targets": {"dense_bw_fraction_min": DENSE_BW_TARGET,
                                        "quest_speedup_vs_sdpa_min_at_32768_budget_2048": QUEST_SPEEDUP_TARGET,
                                        "quest_floor_fraction_min": QUEST_FLOOR_TARGET}}
    rows = []
    dtype = getattr(torch, cfg.dtype)
    for B in cfg.batches:
        for S in cfg.contexts:
            rows += _run_case(cfg, sa, dtype, B, S, bw, log, llc)
            gc.collect()
    meta["other_cpu_busy_end"] = cpu_busy_fraction()
    return rows, meta


def _run_case(cfg, sa, dtype, B, S, bw, log, llc) -> list[dict]:
    g = torch.Generator().manual_seed(cfg.seed * 1000003 + B * 7919 + S)
    Hq, Hkv, D, ps = cfg.heads_q, cfg.heads_kv, cfg.head_dim, cfg.page_size
    k = torch.randn(B, S, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, S, Hkv, D, generator=g).to(dtype)
    q = torch.randn(B, Hq, D, generator=g).to(dtype)
    pages_per_seq = -(-S // ps) + 1
    cache = sa.PagedKVCache(B * pages_per_seq, ps, Hkv, D, batch_size=B, max_pages_per_seq=pages_per_seq, dtype=dtype)
    cache.prefill(k, v, torch.full((B,), S))
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)
    out = torch.empty_like(q)
    evict = llc or data_evictor(cache.k_pages, cache.v_pages, cache.k_max, cache.k_min, k, v)
    # Code warm, data cold: each timed op first runs on a cache of one page per sequence.
    tiny = one_page_cache_like(cache)
    tkh, t_out = tiny.k_pages.transpose(1, 2), torch.empty_like(q)  # [B, H_kv, page, D] for SDPA
    t_scores = sa.quest_scores(q, tiny)
    t_pages, t_counts = sa.select_pages(t_scores, tiny, token_budget=ps)
    code = cfg.code == "warm"
    projection = projection_standin() if code else None

    def warm_with(*calls):  # the previous layer's projection, then the op on the tiny cache
        return code_warmer(projection, *calls) if code else (lambda: None)

    def sdpa():
        return F.scaled_dot_product_attention(q[:, :, None], kh, vh, enable_gqa=True)

    fns = {"sdpa": (sdpa, [()]), "dense": (lambda: sa.paged_decode_attention(q, cache, out=out), [()])}
    warm = {"sdpa": warm_with(lambda: F.scaled_dot_product_attention(q[:, :, None], tkh, tkh, enable_gqa=True)),
            "dense": warm_with(lambda: sa.paged_decode_attention(q, tiny, out=t_out))}
    for budget in cfg.budgets:
        fns[f"quest{budget}"] = (lambda b=budget: sa.quest_decode(q, cache, token_budget=b, out=out), [()])
        warm[f"quest{budget}"] = warm_with(lambda b=budget: sa.quest_decode(q, tiny, token_budget=b, out=t_out))
        if code:  # the same step without the warm-up, for comparison
            fns[f"quest{budget}_code_cold"] = fns[f"quest{budget}"]
    # Correctness of what is timed: dense paged decode against SDPA.
    err = float((sa.paged_decode_attention(q, cache).float() - sdpa()[:, :, 0].float()).abs().max())
    t = time_interleaved(fns, warmup=cfg.warmup, repeats=cfg.repeats, before=evict, warm=warm)
    ms = {name: (r["median"] * 1e3 if "median" in r else None) for name, r in t.items()}
    kv_bytes = B * S * Hkv * D * 2 * k.element_size()
    base = {"batch": B, "context": S, "heads_q": Hq, "heads_kv": Hkv, "head_dim": D, "page_size": ps,
            "dtype": cfg.dtype, "read_bandwidth_gbs": bw, "sdpa_ms": ms["sdpa"], "dense_ms": ms["dense"],
            "dense_gbs": kv_bytes / ms["dense"] / 1e6, "sdpa_gbs": kv_bytes / ms["sdpa"] / 1e6,
            "dense_max_abs_diff_vs_sdpa": err}
    base["dense_bw_fraction"] = base["dense_gbs"] / bw
    base["sdpa_bw_fraction"] = base["sdpa_gbs"] / bw
    base["dense_ok"] = base["dense_bw_fraction"] >= DENSE_BW_TARGET
    rows = []
    npages = -(-S // ps)
    w_scores = warm_with(lambda: sa.quest_scores(q, tiny))
    w_attn = warm_with(lambda: sa.paged_decode_attention(q, tiny, pages=t_pages, counts=t_counts, out=t_out))
    for budget in cfg.budgets:
        row = dict(base, budget=budget, case=f"B={B} S={S} budget {budget}", quest_ms=ms[f"quest{budget}"])
        scores = sa.quest_scores(q, cache)
        pages, counts = sa.select_pages(scores, cache, token_budget=budget)
        first = torch.arange(pages.shape[-1], dtype=pages.dtype).expand_as(pages).contiguous()
        w_select = warm_with(lambda: sa.select_pages(t_scores, tiny, token_budget=budget))

        def part(fn, w):
            return time_fn(fn, [()], warmup=cfg.warmup, repeats=cfg.repeats, before=lambda: (evict(), w()))

        parts = {
            "scores_ms": part(lambda: sa.quest_scores(q, cache), w_scores),
            "select_ms": part(lambda: sa.select_pages(scores, cache, token_budget=budget), w_select),
            "attn_ms": part(lambda: sa.paged_decode_attention(q, cache, pages=pages, counts=counts, out=out), w_attn),
            # Control: the same op over as many pages per head, every head taking the first
            # pages (adjacent in the pool): the cost of the selected pages being scattered.
            "attn_first_pages_ms": part(
                lambda: sa.paged_decode_attention(q, cache, pages=first, counts=counts, out=out), w_attn),
        }
        for key, r in parts.items():
            row[key] = r["median"] * 1e3
        sel_tokens = int(counts.sum()) * ps / Hkv  # per KV head, averaged (last pages may be partial)
        meta_bytes = 2 * B * npages * Hkv * D * k.element_size()
        sel_bytes = int(counts.sum()) * ps * D * 2 * k.element_size()
        row["selected_tokens_per_head"] = sel_tokens / B
        row["quest_bytes"] = meta_bytes + sel_bytes
        row["quest_floor_ms"] = row["quest_bytes"] / bw / 1e6
        row["quest_floor_fraction"] = row["quest_floor_ms"] / row["quest_ms"]
        row["quest_speedup_vs_sdpa"] = row["sdpa_ms"] / row["quest_ms"]
        row["quest_ok"] = row["quest_floor_fraction"] >= QUEST_FLOOR_TARGET and (
            row["quest_speedup_vs_sdpa"] >= QUEST_SPEEDUP_TARGET or not (S == 32768 and budget == 2048))
        cold_name = f"quest{budget}_code_cold"
        cold_median = t.get(cold_name, {}).get("median")
        row["quest_code_cold_ms"] = cold_median * 1e3 if cold_median is not None else None
        row["timings_s"] = {n: t[n] for n in ("sdpa", "dense", f"quest{budget}", cold_name) if n in t}
        # Noise flag over the timings the targets use (the code-cold comparison is bimodal by nature).
        spreads = [x["max"] / x["min"] for n, x in row["timings_s"].items() if x.get("min") and n != cold_name]
        row["max_spread"] = max(spreads) if spreads else None
        rows.append(row)
        log("[decode] " + _one_line(row))
    return rows


def _one_line(r: dict) -> str:
    return (f"{r['case']}: sdpa {r['sdpa_ms']:.2f} ms ({r['sdpa_bw_fraction']:.0%} bw)  dense {r['dense_ms']:.2f} ms "
            f"({r['dense_bw_fraction']:.0%} bw)  quest {r['quest_ms']:.2f} ms = scores {r['scores_ms']:.2f} + "
            f"select {r['select_ms']:.2f} + attn {r['attn_ms']:.2f} (first pages {r['attn_first_pages_ms']:.2f})  "
            f"x{r['quest_speedup_vs_sdpa']:.1f} vs sdpa, "
            f"{r['quest_floor_fraction']:.0%} of floor")


COLUMNS = [
    ("case", lambda r: r["case"]),
    ("sdpa ms", lambda r: _fmt(r["sdpa_ms"], ".2f")),
    ("sdpa bw", lambda r: _fmt(r["sdpa_bw_fraction"], ".0%")),
    ("dense ms", lambda r: _fmt(r["dense_ms"], ".2f")),
    ("dense bw", lambda r: _fmt(r["dense_bw_fraction"], ".0%")),
    (f">={DENSE_BW_TARGET:.0%}", lambda r: _ok(r["dense_ok"])),
    ("quest ms", lambda r: _fmt(r["quest_ms"], ".2f")),
    ("code cold", lambda r: _fmt(r.get("quest_code_cold_ms"), ".2f")),
    ("scores", lambda r: _fmt(r["scores_ms"], ".2f")),
    ("select", lambda r: _fmt(r["select_ms"], ".2f")),
    ("attn", lambda r: _fmt(r["attn_ms"], ".2f")),
    ("attn, first pages", lambda r: _fmt(r.get("attn_first_pages_ms"), ".2f")),
    ("sdpa/quest", lambda r: _fmt(r["quest_speedup_vs_sdpa"], ".1f")),
    ("floor ms", lambda r: _fmt(r["quest_floor_ms"], ".2f")),
    ("floor/quest", lambda r: _fmt(r["quest_floor_fraction"], ".0%")),
    ("ok", lambda r: _ok(r["quest_ok"])),
]


def format_table(rows: list[dict]) -> str:
    out = text_table(rows, COLUMNS)
    out.append(f"read bandwidth {rows[0]['read_bandwidth_gbs']:.1f} GB/s (same run); ok: Quest >= "
               f"{QUEST_FLOOR_TARGET:.0%} of its floor (and >= {QUEST_SPEEDUP_TARGET:g}x SDPA at 32768/2048)"
               if rows else "no rows")
    noisy = [r["case"] for r in rows if (r.get("max_spread") or 0) > NOISY_SPREAD]
    if noisy:
        out.append(f"noisy (slowest/fastest repeat > {NOISY_SPREAD}): " + ", ".join(noisy))
    return "\n".join(out)


PLOT = {"time_keys": ["sdpa_ms", "dense_ms", "quest_ms", "quest_floor_ms"]}
