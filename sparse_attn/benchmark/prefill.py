"""Prefill suite: block-sparse and streaming attention against dense SDPA and compiled FlexAttention.

Per (dtype, seqlen) group, fresh random ``[B, S, H, D]`` inputs (several sets, rotated), and
per case (random block masks at several densities and block sizes, and streaming), timed
call by call in turns (:func:`harness.time_interleaved`):

* ours: ``sparse_attn.block_sparse_attention`` / ``sparse_attn.streaming_attention``;
* dense: ``F.scaled_dot_product_attention(is_causal=True)`` on ``[B, H, S, D]`` views of the
  same tensors (GQA through ``enable_gqa=True`` where torch has it, else KV expanded once
  before timing);
* flex: ``torch.compile(flex_attention)`` with the same blocks (``mask.to_flex``; for
  streaming, the BlockMask of ``sparse_attn.masks.streaming_mask``), compile time excluded.

Limits: ``ours <= 1.25 * density * dense`` (``ratio_vs_dense_x_density``) and
``flex / ours > 1`` (``speedup_vs_flex``).
"""
from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .harness import apply_common_args, cpu_busy_fraction, loadavg, read_bandwidth_gbs, time_interleaved

RATIO_TARGET = 1.25  # ours / (density * dense) at most this
SPEEDUP_TARGET = 1.0  # flex / ours above this
NOISY_SPREAD = 1.3  # a row whose slowest repeat is this much slower than its fastest is flagged

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
_SHORT = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}


@dataclass
class PrefillConfig:
    dtypes: list[str] = field(default_factory=lambda: ["bfloat16", "float32"])
    seqlens: list[int] = field(default_factory=lambda: [8192, 16384])
    densities: list[float] = field(default_factory=lambda: [0.10, 0.25, 0.50])
    block_sizes: list[int] = field(default_factory=lambda: [64, 128])
    streaming: bool = True
    sink_tokens: int = 128
    window_tokens: int = 2048
    streaming_block_size: int = 128  # block size of the streaming BlockMask given to flex
    batch: int = 1
    heads_q: int = 32
    heads_kv: int = 8
    head_dim: int = 128
    warmup: int = 1
    repeats: int = 5
    input_sets: int = 3
    flex: bool = True
    bandwidth: bool = True  # measure read bandwidth in the same run (for the record)
    seed: int = 0


def quick_config() -> PrefillConfig:
    """About two minutes on a 2-core machine: 4096 tokens, 25% density, bs 64/128 + streaming."""
    return PrefillConfig(seqlens=[4096], densities=[0.25], repeats=3)


def config_from_args(args) -> PrefillConfig:
    cfg = quick_config() if getattr(args, "quick", False) else PrefillConfig()
    apply_common_args(cfg, args, dtypes=DTYPES)
    if getattr(args, "densities", None):
        cfg.densities = list(args.densities)
    if getattr(args, "block_sizes", None):
        cfg.block_sizes = list(args.block_sizes)
    if getattr(args, "no_flex", False):
        cfg.flex = False
    if getattr(args, "no_streaming", False):
        cfg.streaming = False
    return cfg


# ----------------------------------------------------------------------------- masks, density

def random_block_map(seqlen_q: int, seqlen_k: int, heads: int, block_size: int, density: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Bool ``[1, heads, MB, NB]``: per head, ``round(density * causal blocks)`` causal blocks.

    Causal is bottom-right aligned. Each row's diagonal block (the last causal one) is always
    in, so no row is empty; the rest are drawn uniformly among the other causal blocks.
    """
    mb = math.ceil(seqlen_q / block_size)
    nb = math.ceil(seqlen_k / block_size)
    m = torch.arange(mb)
    last_q = torch.clamp((m + 1) * block_size, max=seqlen_q) - 1
    diag = torch.div(last_q + (seqlen_k - seqlen_q), block_size, rounding_mode="floor")
    if bool((diag < 0).any()):
        raise ValueError("some query block sees no key (seqlen_q > seqlen_k)")
    n = torch.arange(nb)
    causal = n[None, :] <= diag[:, None]  # [MB, NB]
    candidates = n[None, :] < diag[:, None]  # causal, off the diagonal
    total = int(causal.sum())
    extra = min(max(round(density * total) - mb, 0), int(candidates.sum()))
    block_map = torch.zeros(heads, mb, nb, dtype=torch.bool)
    block_map[:, m, diag] = True
    if extra:
        scores = torch.rand(heads, mb * nb, generator=generator)
        scores[:, ~candidates.reshape(-1)] = -1.0
        picked = scores.topk(extra, dim=1).indices
        block_map.view(heads, -1).scatter_(1, picked, True)
    return block_map.unsqueeze(0)


def streaming_density(seqlen_q: int, seqlen_k: int, sink_tokens: int, window_tokens: int) -> float:
    """Exact fraction of causal (q, k) pairs that sink + window attention computes.

    Query ``i`` sits at key position ``p = seqlen_k - seqlen_q + i`` and attends ``j <= p`` with
    ``j < sink_tokens`` or ``p - j < window_tokens`` (the window includes the query itself).
    """
    p = torch.arange(seqlen_q, dtype=torch.int64) + (seqlen_k - seqlen_q)
    causal = torch.clamp(p + 1, min=0)
    window = torch.clamp(causal, max=window_tokens)
    sink = torch.clamp(torch.clamp(p + 1 - window_tokens, min=0), max=sink_tokens)
    return float((window + sink).sum()) / float(causal.sum())


# ----------------------------------------------------------------------------- baselines

def sdpa_gqa_mode() -> str:
    """'enable_gqa' when SDPA takes it (torch >= 2.5), else 'expand_kv'."""
    q = torch.randn(1, 4, 8, 16)
    k = torch.randn(1, 2, 8, 16)
    try:
        F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
        return "enable_gqa"
    except (TypeError, RuntimeError):
        return "expand_kv"


_FLEX = None


def compiled_flex():
    """One ``torch.compile(flex_attention)`` for the process, static shapes, no eager fallback.

    ``fullgraph=True`` makes a failed compile raise instead of silently running eager
    flex_attention, which materializes the full score matrix (tens of GB at 16k tokens).
    """
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    return _FLEX


def _dynamo_settings():
    """Each (dtype, shape, block size) is a recompile: lift the limit, and never fall back."""
    try:
        import torch._dynamo.config as dc
    except ImportError:
        return contextlib.nullcontext()
    patch = {}
    for name, value in (("recompile_limit", 64), ("cache_size_limit", 64),
                        ("fail_on_recompile_limit_hit", True), ("automatic_dynamic_shapes", False)):
        if hasattr(dc, name):
            patch[name] = value
    return dc.patch(**patch)


# ----------------------------------------------------------------------------- running

def _err_str(s: str) -> str:
    return s if len(s) <= 600 else s[:600] + " ..."


def _err(e: BaseException) -> str:
    return _err_str(f"{type(e).__name__}: {e}")


def _api():
    try:
        import sparse_attn
        from sparse_attn.masks import streaming_mask

        return sparse_attn, streaming_mask
    except Exception as e:
        raise SystemExit(f"sparse_attn ops not importable ({_err(e)}); build the extension first "
                         "(pip install --no-build-isolation . or python setup.py build_ext --inplace)")


def _make_inputs(cfg: PrefillConfig, seqlen: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(cfg.input_sets):
        q = torch.randn(cfg.batch, seqlen, cfg.heads_q, cfg.head_dim, generator=g, dtype=dtype)
        k = torch.randn(cfg.batch, seqlen, cfg.heads_kv, cfg.head_dim, generator=g, dtype=dtype)
        v = torch.randn(cfg.batch, seqlen, cfg.heads_kv, cfg.head_dim, generator=g, dtype=dtype)
        sets.append((q, k, v))
    return sets


def _max_diff(ours_bshd: torch.Tensor, flex_bhsd: torch.Tensor) -> float:
    return float((ours_bshd.float() - flex_bhsd.transpose(1, 2).float()).abs().max())


def run(cfg: PrefillConfig, log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Run every case; return ``(rows, meta)``. Progress lines go to ``log`` (stderr by default)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    sa, streaming_mask = _api()
    gqa = sdpa_gqa_mode()
    meta: dict[str, Any] = {
        "suite": "prefill",
        "config": asdict(cfg),
        "sdpa_gqa": gqa,
        "timing": "per case, ours / dense / flex interleaved call by call (harness.time_interleaved), "
                  "median of repeats, rotating over input_sets fresh randn input sets",
        "dense": f"F.scaled_dot_product_attention(is_causal=True) on [B,H,S,D] views of the [B,S,H,D] "
                 f"inputs, GQA via {gqa}",
        "flex": ("torch.compile(flex_attention, dynamic=False, fullgraph=True), same BlockMask "
                 "(mask.to_flex, causal mask_mod); streaming: streaming_mask(...).to_flex, a block "
                 "superset; compile time excluded (flex_first_call_s)") if cfg.flex else "disabled",
        "density": "block cases: mask.density (fraction of causal blocks); streaming: exact "
                   "fraction of causal (q, k) pairs",
        "targets": {"ratio_vs_dense_x_density_max": RATIO_TARGET, "speedup_vs_flex_min": SPEEDUP_TARGET},
    }
    if cfg.bandwidth:
        meta["read_bandwidth_gbs"] = read_bandwidth_gbs()
        log(f"[prefill] read bandwidth {meta['read_bandwidth_gbs']:.1f} GB/s")

    meta["loadavg_start"] = loadavg()
    meta["other_cpu_busy_start"] = cpu_busy_fraction()
    rows: list[dict] = []
    with _dynamo_settings():
        for dname in cfg.dtypes:
            dtype = DTYPES[dname]
            for S in cfg.seqlens:
                rows += _run_group(cfg, sa, streaming_mask, gqa, dname, dtype, S, log)
                gc.collect()
    meta["loadavg_end"] = loadavg()
    meta["other_cpu_busy_end"] = cpu_busy_fraction()
    return rows, meta


def _run_group(cfg, sa, streaming_mask, gqa, dname, dtype, S, log) -> list[dict]:
    short = _SHORT.get(dname, dname)
    inputs = _make_inputs(cfg, S, dtype, seed=cfg.seed * 1_000_003 + S)
    views = [tuple(x.transpose(1, 2) for x in qkv) for qkv in inputs]  # [B, H, S, D], no copy
    group = cfg.heads_q // cfg.heads_kv

    if gqa == "enable_gqa":
        dense_inputs = views

        def dense(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:  # old torch: expand KV once, before timing
        dense_inputs = [(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))
                        for q, k, v in views]

        def dense(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    base = {"dtype": dname, "seqlen": S, "batch": cfg.batch, "heads_q": cfg.heads_q,
            "heads_kv": cfg.heads_kv, "head_dim": cfg.head_dim}
    cases = []  # (row fields, our fn, thunk giving the flex BlockMask, compare outputs with flex?)
    for bs in cfg.block_sizes:
        for dens in cfg.densities:
            mgen = torch.Generator().manual_seed(cfg.seed * 7919 + S * 31 + bs * 7 + round(dens * 1000))
            block_map = random_block_map(S, S, cfg.heads_q, bs, dens, mgen)
            mask = sa.BlockSparseMask.from_dense(block_map, (bs, bs))
            fields = dict(base, op="block_sparse", pattern="random", block_size=bs,
                          density_requested=dens, density=float(mask.density(S, S, causal=True)),
                          case=f"{short} S={S} blk{bs} {round(dens * 100)}%")
            cases.append((fields,
                          lambda q, k, v, mask=mask: sa.block_sparse_attention(q, k, v, mask, causal=True),
                          lambda mask=mask: mask.to_flex(S, S, causal=True), True))
    if cfg.streaming:
        sink, win, sbs = cfg.sink_tokens, cfg.window_tokens, cfg.streaming_block_size
        sfields = dict(base, op="streaming", pattern="streaming", sink_tokens=sink, window_tokens=win,
                       block_size=sbs, density=streaming_density(S, S, sink, win),
                       case=f"{short} S={S} stream {sink}+{win}")

        def flex_mask_streaming():
            m = streaming_mask(S, S, sink_tokens=sink, window_tokens=win, block_size=(sbs, sbs))
            sfields["flex_block_density"] = float(m.density(S, S, causal=True))
            return m.to_flex(S, S, causal=True)

        cases.append((sfields,
                      lambda q, k, v: sa.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=win),
                      flex_mask_streaming, False))

    rows = []
    for fields, ours, flex_mask_fn, compare in cases:
        row = dict(fields)
        fns = {"dense": (dense, dense_inputs)}
        ours_out = None
        try:
            ours_out = ours(*inputs[0])  # first call, untimed; its output is checked against flex
            fns["ours"] = (ours, inputs)
        except Exception as e:
            row["ours_error"] = _err(e)
        if cfg.flex:
            try:
                bm = flex_mask_fn()
                flex = compiled_flex()

                def flex_fn(q, k, v, bm=bm):
                    return flex(q, k, v, block_mask=bm, enable_gqa=True)

                t0 = time.perf_counter()
                flex_out = flex_fn(*views[0])  # compiles (or recompiles) here, untimed
                row["flex_first_call_s"] = time.perf_counter() - t0
                if compare and ours_out is not None:
                    row["ours_max_abs_diff_vs_flex"] = _max_diff(ours_out, flex_out)
                del flex_out
                fns["flex"] = (flex_fn, views)
            except Exception as e:
                row["flex_error"] = _err(e)
        del ours_out

        # ours, dense, flex take turns, so load from elsewhere hits all three alike
        order = [n for n in ("ours", "dense", "flex") if n in fns]
        timings = time_interleaved({n: fns[n] for n in order}, warmup=cfg.warmup, repeats=cfg.repeats)
        for name in ("ours", "dense", "flex"):
            t = timings.get(name)
            row[f"{name}_ms"] = t["median"] * 1e3 if t and "median" in t else None
            if t and "error" in t:
                row[f"{name}_error"] = _err_str(t["error"])

        d = row["density"]
        dense_ms, ours_ms, flex_ms = row["dense_ms"], row["ours_ms"], row["flex_ms"]
        row["dense_x_density_ms"] = d * dense_ms if dense_ms else None
        row["ratio_vs_dense_x_density"] = ours_ms / (d * dense_ms) if ours_ms and dense_ms else None
        row["ratio_ok"] = None if row["ratio_vs_dense_x_density"] is None \
            else row["ratio_vs_dense_x_density"] <= RATIO_TARGET
        row["speedup_vs_flex"] = flex_ms / ours_ms if ours_ms and flex_ms else None
        row["speedup_ok"] = None if row["speedup_vs_flex"] is None else row["speedup_vs_flex"] > SPEEDUP_TARGET
        row["timings_s"] = timings
        spreads = [t["max"] / t["min"] for t in timings.values() if "min" in t and t["min"] > 0]
        row["max_spread"] = max(spreads) if spreads else None  # max/min of the repeats
        rows.append(row)
        log("[prefill] " + _one_line(row))
    return rows


# ----------------------------------------------------------------------------- reporting

def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _ok(x) -> str:
    return "-" if x is None else ("yes" if x else "NO")


def _one_line(r: dict) -> str:
    s = (f"{r['case']}: density {r['density']:.3f}  ours {_fmt(r['ours_ms'], '.1f')} ms  "
         f"dense {_fmt(r['dense_ms'], '.1f')} ms  flex {_fmt(r['flex_ms'], '.1f')} ms")
    for key in ("ours_error", "dense_error", "flex_error"):
        if key in r:
            s += f"  [{key}: {r[key]}]"
    return s


COLUMNS = [
    ("case", "case", "<", lambda r: r["case"]),
    ("density", "density", ">", lambda r: _fmt(r["density"], ".3f")),
    ("ours ms", "ours_ms", ">", lambda r: _fmt(r["ours_ms"], ".1f") if r["ours_ms"] is not None else "ERR"),
    ("dense ms", "dense_ms", ">", lambda r: _fmt(r["dense_ms"], ".1f")),
    ("flex ms", "flex_ms", ">", lambda r: _fmt(r["flex_ms"], ".1f") if "flex_error" not in r else "ERR"),
    ("ours/(d*dense)", "ratio", ">", lambda r: _fmt(r["ratio_vs_dense_x_density"], ".2f")),
    (f"<={RATIO_TARGET}", "ratio_ok", ">", lambda r: _ok(r["ratio_ok"])),
    ("flex/ours", "speedup", ">", lambda r: _fmt(r["speedup_vs_flex"], ".2f")),
    (f">{SPEEDUP_TARGET:g}", "speedup_ok", ">", lambda r: _ok(r["speedup_ok"])),
]


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table, plus any errors underneath."""
    cells = [[c[3](r) for c in COLUMNS] for r in rows]
    widths = [max([len(c[0])] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    line = lambda vals: "  ".join(format(v, f"{COLUMNS[i][2]}{widths[i]}") for i, v in enumerate(vals))
    out = [line([c[0] for c in COLUMNS]), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    for r in rows:
        for key in ("ours_error", "flex_error", "dense_error"):
            if key in r:
                out.append(f"{r['case']}: {key}: {r[key]}")
    noisy = [r["case"] for r in rows if (r.get("max_spread") or 0) > NOISY_SPREAD]
    if noisy:
        out.append(f"noisy (slowest/fastest repeat > {NOISY_SPREAD}; other load on the machine?): "
                   + ", ".join(noisy))
    return "\n".join(out)


PLOT = {"time_keys": ["ours_ms", "dense_x_density_ms", "flex_ms", "dense_ms"], "ratio_key": "ratio_vs_dense_x_density",
        "ratio_target": RATIO_TARGET}
