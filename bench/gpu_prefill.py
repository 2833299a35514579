#!/usr/bin/env python3
"""GPU prefill benchmark of the CUDA engine (issue 6): block-sparse, streaming and
vertical-slash attention against dense FlashAttention-2 (`scaled_dot_product_attention`, flash
backend) and, for block-sparse, compiled `flex_attention` with the same block mask, at 8k to
128k tokens.

    python bench/gpu_prefill.py [--seqlens 8192 16384 ...] [--densities 0.1 0.3]
                                [--vs-budgets 1000:6096 ...] [--vs-patterns structured random]
                                [--out DIR] [--quick]

Vertical-slash is timed as a caller runs it: list normalization, the host copy that validates
the lists, the device index and the attention. Two kinds of lists per head: ``structured``,
what estimate_vertical_slash picks on LLM-like q/k (the CPU suite's generator: rotary local
decay and sink keys, so mostly the first diagonals), and ``random`` (the first 64 keys and 64
diagonals plus random ones). The density is the exact fraction of causal pairs attended;
``computed_fraction`` is the work the kernel does in whole 64 x 64 blocks plus gathered
columns. Random diagonals spread over the sequence touch nearly every block (computed 0.85-1.0
at 8k-128k for 500-6096 offsets, while the attended density is 0.02-0.6), so the kernel is
judged by ``ratio_vs_computed_x_dense``; the first H100 run (2026-11-22) had only random lists.

Per case: median of CUDA-event timings after a warm-up, each op timed in turns with its
baselines; effective TFLOP/s both dense-equivalent (the causal dense FLOPs / time) and actual
(the FLOPs of the attended blocks / time), and ratio = ours / (density x dense time), the
target being <= 1.2 at density <= 0.3 on an H100. Writes JSON to --out (default
bench/results/gpu_prefill_<date>.json). Needs a CUDA device; nothing here is run in CI.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

import sparse_attn
from gpu_bench import median_ms, parse_args, write_results
from sparse_attn.masks import BlockSparseMask


def random_causal_blocks(H: int, nb: int, density: float, seed: int) -> torch.Tensor:
    """Per head, about `density` of the causal blocks, always the diagonal and block 0."""
    g = torch.Generator().manual_seed(seed)
    causal = torch.ones(nb, nb, dtype=torch.bool).tril()
    keep = (torch.rand(1, H, nb, nb, generator=g) < density) & causal
    eye = torch.eye(nb, dtype=torch.bool)
    keep |= eye
    keep[..., 0] = True
    return keep


def streaming_fraction(S: int, sink: int, window: int) -> float:
    """Visible (query, key) pairs of sink + window over the causal pairs (exact)."""
    i = torch.arange(S, dtype=torch.float64)
    sink_n = torch.clamp(i + 1, max=sink)
    win_lo = torch.clamp(i - window + 1, min=0)
    win_n = i + 1 - win_lo
    overlap = torch.clamp(sink_n - win_lo, min=0)
    return float((sink_n + win_n - overlap).sum() / (S * (S + 1) / 2))


def vs_lists(H: int, S: int, n_vertical: int, n_slash: int, seed: int):
    """Per head: columns 0..63 plus random ones, offsets 0..63 plus random ones ([1, H, n] int32)."""
    g = torch.Generator().manual_seed(seed)
    local = torch.arange(64).expand(H, 64)
    v = torch.cat([local, torch.randint(64, S, (H, max(n_vertical - 64, 0)), generator=g)], 1)
    s = torch.cat([local, torch.randint(64, S, (H, max(n_slash - 64, 0)), generator=g)], 1)
    return v[None].int(), s[None].int()


def vs_fraction(vertical: torch.Tensor, slash: torch.Tensor, S: int) -> float:
    """Exact fraction of the causal (query, key) pairs a vertical-slash pattern attends (Sq = Sk
    = S, offset 0 always): column j has S - j rows, offset s has S - s, and a (column, offset)
    pair meets once, at row j + s, when j + s < S."""
    pairs = 0
    for h in range(vertical.shape[1]):
        cols = torch.unique(vertical[0, h].long())
        cols = cols[cols < S]
        offs = torch.unique(torch.cat([slash[0, h].long(), torch.zeros(1, dtype=torch.long)]))
        offs = offs[offs < S]
        overlap = torch.searchsorted(offs, S - cols).sum()  # offsets s < S - j, per column j
        pairs += int((S - cols).sum() + (S - offs).sum() - overlap)
    return pairs / (vertical.shape[1] * S * (S + 1) / 2)


def vs_computed(vertical: torch.Tensor, slash: torch.Tensor, S: int) -> float:
    """Fraction of the dense causal work the kernel computes for these lists (whole 64 x 64
    blocks plus gathered columns, from the CPU index). Random offsets spread over the whole
    sequence touch nearly every diagonal block: the kernel then computes nearly dense work
    whatever the attended density, so its speed is judged against this fraction."""
    from sparse_attn.benchmark.vertical_slash import computed_fraction

    index = sparse_attn.vertical_slash_index(vertical, slash, seqlen_q=S, seqlen_k=S, block_size=64)
    return computed_fraction(index, S, S)


def vs_case(pattern: str, budget, S: int, H: int, Hkv: int, D: int, dtype, q, k, v):
    """(vertical, slash, (q, k, v)) on the GPU. ``random``: vs_lists on the shared random q/k/v.
    ``structured``: q/k/v made like an LLM's (rotary local decay + sink keys, the CPU suite's
    generator, sparse_attn.benchmark.vertical_slash.make_inputs) and the lists that
    estimate_vertical_slash picks from them (mostly the first diagonals, as in real models)."""
    if pattern == "random":
        vl, sl = vs_lists(H, S, *budget, seed=S)
        return vl.cuda(), sl.cuda(), (q, k, v)
    from sparse_attn.benchmark.vertical_slash import VerticalSlashConfig, make_inputs

    cfg = VerticalSlashConfig(heads_q=H, heads_kv=Hkv, head_dim=D)
    qs, ks, vs = (x.cuda() for x in make_inputs(cfg, S, dtype, "structured", seed=S))
    vl, sl = sparse_attn.estimate_vertical_slash(qs, ks, n_vertical=budget[0], n_slash=budget[1], last_q=64)
    return vl, sl, (qs, ks, vs)


def flex_runner(q, k, v, bmap, block):
    """Compiled flex_attention with the same blocks (causal mask_mod on top), or None."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    S = q.shape[1]
    bm = bmap[0].cuda()

    def mask_mod(b, h, qi, ki):
        return (qi >= ki) & bm[h, qi // block, ki // block]

    # _compile: evaluate mask_mod block by block (eagerly it materializes S x S per head)
    block_mask = create_block_mask(mask_mod, 1, q.shape[2], S, S, device="cuda", BLOCK_SIZE=block, _compile=True)
    fa = torch.compile(flex_attention)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    # flex's default tiles on Hopper are 128 x 128 (or 128 x 64) and must divide the mask's blocks
    opts = {"BLOCK_M": block, "BLOCK_N": block}
    return lambda: fa(qt, kt, vt, block_mask=block_mask, enable_gqa=True, kernel_options=opts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqlens", type=int, nargs="+", default=[8192, 16384, 32768, 65536, 131072])
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--vs-budgets", nargs="+", default=["1000:6096", "500:2048"],
                    help="vertical-slash cases, n_vertical:n_slash per head")
    ap.add_argument("--vs-patterns", nargs="+", default=["structured", "random"], choices=["structured", "random"],
                    help="vertical-slash lists: the estimator's on LLM-like q/k (structured), or random ones")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dims", type=int, nargs="+", default=[128])
    ap.add_argument("--no-flex", action="store_true")
    args = parse_args(ap, "gpu_prefill", 10, "8k and 16k, 3 repeats")
    if args is None:
        return 2
    if args.quick:
        args.seqlens, args.repeats = [8192, 16384], 3
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    dtype, block = torch.bfloat16, 64
    for D in args.head_dims:
        for S in args.seqlens:
            H, Hkv = args.heads, args.kv_heads
            q = torch.randn(1, S, H, D, dtype=dtype, device="cuda")
            k = torch.randn(1, S, Hkv, D, dtype=dtype, device="cuda")
            v = torch.randn(1, S, Hkv, D, dtype=dtype, device="cuda")
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

            def dense():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True,
                                                                            enable_gqa=True)

            try:
                dense_ms = median_ms(dense, 2, args.repeats)
            except RuntimeError as e:  # e.g. no flash kernel for this GQA layout in this torch
                print(f"dense SDPA (flash) failed at S={S}: {e}", file=sys.stderr)
                dense_ms = float("nan")
            dense_flops = 4 * S * S / 2 * H * D  # causal: half of QK^T and PV
            nb = math.ceil(S / block)
            cases = [("block_sparse", d) for d in args.densities] + [("streaming", None)]
            cases += [("vertical_slash", (tuple(int(x) for x in b.split(":")), pattern))
                      for pattern in args.vs_patterns for b in args.vs_budgets]
            for op, density in cases:
                if op == "block_sparse":
                    bmap = random_causal_blocks(H, nb, density, seed=S)
                    mask = BlockSparseMask.from_dense(bmap.cuda(), block)
                    frac = bmap.sum().item() / (H * nb * (nb + 1) / 2)
                    ours = lambda: sparse_attn.block_sparse_attention(q, k, v, mask, validate=False)  # noqa: E731
                    try:
                        flex = None if args.no_flex else flex_runner(q, k, v, bmap, block)
                    except Exception as e:  # a baseline that cannot be built must not hide our figures
                        print(f"flex_attention mask failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                        flex = None
                elif op == "streaming":
                    frac = streaming_fraction(S, 128, 4096)
                    ours = lambda: sparse_attn.streaming_attention(q, k, v, sink_tokens=128, window_tokens=4096)  # noqa: E731
                    flex = None
                else:  # vertical_slash: no flex baseline (its block mask would need the S x S pattern)
                    budget, pattern = density
                    vl, sl, qkv = vs_case(pattern, budget, S, H, Hkv, D, dtype, q, k, v)
                    frac = vs_fraction(vl.cpu(), sl.cpu(), S)
                    computed = vs_computed(vl.cpu(), sl.cpu(), S)
                    ours = lambda: sparse_attn.vertical_slash_attention(*qkv, vl, sl)  # noqa: E731
                    flex = None
                ours_ms = median_ms(ours, 2, args.repeats)
                try:
                    flex_ms = median_ms(flex, 2, args.repeats) if flex else float("nan")
                except Exception as e:  # a baseline that does not compile must not hide our figures
                    print(f"flex_attention failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                    flex_ms = float("nan")
                is_vs = op == "vertical_slash"
                if not is_vs:
                    computed = frac  # whole blocks: the attended pairs are the computed ones
                row = dict(op=op, seqlen=S, head_dim=D, heads=H, kv_heads=Hkv, density=round(frac, 4),
                           budget=list(density[0]) if is_vs else None, pattern=density[1] if is_vs else None,
                           computed_fraction=round(computed, 4),
                           ours_ms=ours_ms, dense_ms=dense_ms, flex_ms=flex_ms,
                           tflops_dense_equiv=dense_flops / ours_ms / 1e9,
                           tflops_actual=dense_flops * frac / ours_ms / 1e9,
                           tflops_computed=dense_flops * computed / ours_ms / 1e9,
                           ratio_vs_density_x_dense=ours_ms / (frac * dense_ms),
                           ratio_vs_computed_x_dense=ours_ms / (computed * dense_ms))
                rows.append(row)
                print(json.dumps(row))
            del q, k, v
            torch.cuda.empty_cache()
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, dtype=str(dtype), block=block,
                repeats=args.repeats)
    write_results(args.out, "gpu_prefill", meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
