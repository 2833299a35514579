"""Shared pieces of the GPU benchmark scripts (gpu_prefill.py, gpu_decode.py): CUDA-event
timing and the JSON results file."""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch


def cuda_time_ms(fn, warmup: int, repeats: int, flush: torch.Tensor | None = None) -> list[float]:
    """CUDA-event timings of fn after `warmup` calls; with `flush`, that buffer is zeroed
    before each timed call (outside the timing), evicting the L2 cache."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if flush is not None:
            flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


def median_ms(fn, warmup: int, repeats: int, flush: torch.Tensor | None = None) -> float:
    return statistics.median(cuda_time_ms(fn, warmup, repeats, flush))


def write_results(out: Path | None, name: str, meta: dict, rows: list[dict]) -> Path:
    """{meta, rows} as JSON: to `out` if it ends in .json, else to out/<name>.json (default
    bench/results/<name>_<date>.json). Returns the path."""
    meta = dict(meta, date=datetime.datetime.now().isoformat(timespec="seconds"))
    if out is None:
        out = Path(__file__).resolve().parent / "results" / f"{name}_{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    elif out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"{name}.json"
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {out}")
    return out


def parse_args(ap: argparse.ArgumentParser, name: str, repeats: int, quick_help: str):
    """Adds --repeats, --quick and --out, parses; None (after saying so) without a CUDA device."""
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", type=Path, default=None, help="a .json file or a directory")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(f"{name}: no CUDA device", file=sys.stderr)
        return None
    return args
