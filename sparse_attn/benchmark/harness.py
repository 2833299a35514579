"""Timing harness shared by every benchmark suite.

Rules (see DESIGN.md, "Measuring"): wall-clock time with ``time.perf_counter``, warm-up
calls first, then the median of several repeats, rotating over several freshly drawn input
sets so that a warm cache does not flatter the op, the baseline timed in the same run.
``torch.set_num_threads`` is never touched: we measure what a user gets by default.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import glob
import json
import math
import os
import platform
import re
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = ["apply_common_args", "cache_evictor", "data_evictor", "last_level_cache_bytes", "loadavg", "text_table", "time_fn", "time_interleaved", "cpu_busy_fraction", "machine_info", "read_bandwidth_gbs", "write_results", "plot", "machine_tag"]


def _sync(device: str | None) -> None:
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def gc_paused():
    """Python's garbage collector off (after one full collection) while timing, as ``timeit``
    does. The untimed ``before()`` calls allocate Python objects, and the collection they
    trigger ran inside the timed call that followed: +0.2 ms on a 0.06 ms B=1 page
    selection, in every repeat, a cost that belongs to no op."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_fn(fn: Callable[..., Any], inputs: Sequence[Sequence[Any]], *, warmup: int = 1,
            repeats: int = 5, device: str | None = None, before: Callable[[], Any] | None = None) -> dict:
    """Time ``fn(*inputs[i % len(inputs)])``; ``warmup`` untimed calls, then ``repeats`` timed ones.

    The call index keeps counting through warm-up and repeats, so consecutive calls read
    different input sets. Each call is timed on its own (``time.perf_counter``; on CUDA the
    device is synchronized before and after); ``before()``, if given, runs untimed before
    every timed call (e.g. :func:`cache_evictor`). The garbage collector is paused while
    timing (:func:`gc_paused`). Returns seconds:
    ``{"median", "min", "max", "mean", "times", "warmup", "repeats", "input_sets"}``.
    """
    if not inputs:
        raise ValueError("time_fn needs at least one input set")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    n = len(inputs)
    i = 0
    for _ in range(max(warmup, 0)):
        fn(*inputs[i % n])
        i += 1
    _sync(device)
    times = []
    with gc_paused():
        for _ in range(repeats):
            args = inputs[i % n]
            i += 1
            if before is not None:
                before()
            _sync(device)
            t0 = time.perf_counter()
            fn(*args)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return _stats(times, warmup, repeats, n)


def _stats(times: list[float], warmup: int, repeats: int, n: int) -> dict:
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "mean": statistics.fmean(times),
        "times": times,
        "warmup": warmup,
        "repeats": repeats,
        "input_sets": n,
    }


def time_interleaved(fns: Mapping[str, tuple[Callable[..., Any], Sequence[Sequence[Any]]]], *,
                     warmup: int = 1, repeats: int = 5, device: str | None = None,
                     before: Callable[[], Any] | None = None,
                     warm: Mapping[str, Callable[[], Any]] | None = None) -> dict:
    """Time several ``name -> (fn, inputs)`` side by side, like :func:`time_fn` for each.

    Calls are interleaved (every repeat round times one call of each fn, in order), so load
    from other processes or clock drift hits the op and its baselines alike. A fn that raises
    is dropped from later rounds; its entry becomes ``{"error": "Type: message"}``.
    ``before()``, if given, runs untimed before every timed call, then ``warm[name]()`` where
    given (e.g. :func:`code_warmer`'s call of the same op on a tiny input). The garbage
    collector is paused while timing (:func:`gc_paused`).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    calls = {name: 0 for name in fns}
    times: dict[str, list[float]] = {name: [] for name in fns}
    errors: dict[str, str] = {}

    def one(name: str, timed: bool) -> None:
        fn, inputs = fns[name]
        args = inputs[calls[name] % len(inputs)]
        calls[name] += 1
        try:
            if timed and before is not None:
                before()
            if timed and warm is not None and name in warm:
                warm[name]()
            _sync(device)
            t0 = time.perf_counter()
            fn(*args)
            _sync(device)
            dt = time.perf_counter() - t0
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            return
        if timed:
            times[name].append(dt)

    for _ in range(max(warmup, 0)):
        for name in fns:
            if name not in errors:
                one(name, False)
    with gc_paused():
        for _ in range(repeats):
            for name in fns:
                if name not in errors:
                    one(name, True)
    return {name: ({"error": errors[name]} if name in errors
                   else _stats(times[name], warmup, repeats, len(fns[name][1]))) for name in fns}


def _cpu_times() -> tuple[int, int] | None:
    line = _read_text("/proc/stat").split("\n", 1)[0].split()
    if not line or line[0] != "cpu":
        return None
    vals = [int(x) for x in line[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals[:8]), idle


def cpu_busy_fraction(interval: float = 0.5) -> float | None:
    """Fraction of all cores busy over ``interval`` seconds (from /proc/stat; None elsewhere).

    Called while this process is idle, it shows load from other processes: a test run or
    compile job on one of two cores reads ~0.5 to 1 and roughly doubles every timing.
    """
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(interval)
    b = _cpu_times()
    total, idle = b[0] - a[0], b[1] - a[1]
    return None if total <= 0 else max(0.0, 1.0 - idle / total)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


_INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16",
                      "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def machine_info() -> dict:
    """What the numbers were measured on: CPU, cores, memory, torch, sparse_attn build, date."""
    cpuinfo = _read_text("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    flag_set = set(flags.group(1).split()) if flags else set()
    mem = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read_text("/proc/meminfo"), re.M)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu_model": model.group(1).strip() if model else (platform.processor() or platform.machine()),
        "cpu_flags": [f for f in _INTERESTING_FLAGS if f in flag_set],
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "mem_total_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_cpu_capability": _safe(lambda: torch.backends.cpu.get_cpu_capability()),
        "cuda_device": _safe(lambda: torch.cuda.get_device_name(0) if torch.cuda.is_available() else None),
    }
    try:
        import sparse_attn

        info["sparse_attn"] = sparse_attn.build_info()
    except Exception as e:  # no build yet: say so in the record
        info["sparse_attn"] = {"error": f"{type(e).__name__}: {e}"}
    return info


def _safe(f: Callable[[], Any]) -> Any:
    try:
        return f()
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def read_bandwidth_gbs(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """This machine's memory read bandwidth in GB/s (1e9 bytes/s), for decode limits.

    ``torch.sum`` over a float32 buffer of ``nbytes`` (>= 1 GiB by default, far past any
    cache) with the default thread count; one warm-up pass, median of ``repeats`` passes.
    """
    n = max(nbytes // 4, 1)
    buf = torch.empty(n, dtype=torch.float32)
    buf.fill_(1.0)  # touch every page before timing
    torch.sum(buf)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.sum(buf)
        times.append(time.perf_counter() - t0)
    del buf
    return n * 4 / statistics.median(times) / 1e9


def last_level_cache_bytes() -> int | None:
    """Size of the CPU's last-level cache from sysfs, or None where it cannot be read."""
    best = None
    for idx in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size")):
        text = _read_text(idx).strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            val = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        best = val if best is None else max(best, val)
    return best


def cache_evictor(nbytes: int | None = None) -> Callable[[], None]:
    """A callable that reads a buffer of ``nbytes`` (default: twice the last-level cache,
    at least 256 MiB), so the next timed call finds its data in memory, not in a cache.

    Decode reads each KV byte once per step and a model's KV cache is far larger than the
    caches, so decode is timed cold: a cache that fits in the last-level cache (480 MB on
    some Xeons) would otherwise be read at cache speed from the second repeat on.
    """
    if nbytes is None:
        nbytes = max(2 * (last_level_cache_bytes() or 0), 256 << 20)
    buf = torch.ones(max(nbytes // 4, 1), dtype=torch.float32)

    def evict() -> None:
        torch.sum(buf)

    evict.nbytes = nbytes  # type: ignore[attr-defined]
    evict.kind = "all"  # type: ignore[attr-defined]
    return evict


def data_evictor(*tensors: torch.Tensor) -> Callable[[], None]:
    """A callable that drops the storage of ``tensors`` from every cache level (x86
    ``clflush``, ``sparse_attn._C.flush_from_caches``) and nothing else.

    Inside a decode step a layer's KV cache comes from memory while the code and the small
    tensors around it are still cached; :func:`cache_evictor` evicts the code too, which
    costs a cold call ~0.1 ms per op on this machine (a tiny ``torch.add`` takes 79 us after
    it, 2 us before). The flush runs on the intra-op thread pool: flushed from one thread,
    ~100 MB took long enough for the idle workers to go to sleep, and waking them added
    ~0.1 ms to the next op (B=1 Quest selection 0.27 -> 0.11 ms, 32k tokens), a cost a
    model's decode step, op after op, does not have. Falls back to :func:`cache_evictor` off
    x86 or for non-CPU tensors.
    """
    from .. import _C

    ranges = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors if t is not None]
    if not ranges or any(t.device.type != "cpu" for t in tensors if t is not None) or not _C.flush_from_caches(0, 0):
        return cache_evictor()
    keep = list(tensors)  # the ranges stay valid while the evictor lives

    def evict() -> None:
        for addr, n in ranges:
            _C.flush_from_caches(addr, n)

    evict.nbytes = sum(n for _, n in ranges)  # type: ignore[attr-defined]
    evict.kind = "data"  # type: ignore[attr-defined]
    evict.tensors = keep  # type: ignore[attr-defined]
    return evict


def code_warmer(*calls: Callable[[], Any]) -> Callable[[], None]:
    """A callable running ``calls`` (the timed op on inputs of a few hundred bytes, with
    tensors of its own): run after an evictor, it leaves the op's code path (Python
    wrapper, dispatcher, kernel code, intra-op threads) as warm as in a model's decode
    step, where the same op ran one layer earlier, while the timed call's data stays cold.
    On this machine the first op call after a ~40 ms eviction that followed a multi-MB op
    paid ~0.12 ms more (a 4-float ``torch.add``: 121 us, 6 us right after another tiny op),
    which no op in a running model pays: the B=1 Quest step 1.26-1.32 ms -> 1.04-1.12 ms.
    """
    def warm() -> None:
        for c in calls:
            c()

    return warm


def one_page_cache_like(cache, seed: int = 1):
    """A :class:`sparse_attn.PagedKVCache` with ``cache``'s batch, page size, heads, head_dim
    and dtype holding one full page of random keys per sequence: the tiny input of a
    :func:`code_warmer` call (its data never touches the timed cache's)."""
    from ..paged import PagedKVCache

    B, ps, Hkv, D = cache.batch_size, cache.page_size, cache.k_pages.shape[2], cache.k_pages.shape[3]
    tiny = PagedKVCache(B, ps, Hkv, D, batch_size=B, max_pages_per_seq=1, dtype=cache.k_pages.dtype)
    k = torch.randn(B, ps, Hkv, D, generator=torch.Generator().manual_seed(seed)).to(cache.k_pages.dtype)
    tiny.prefill(k, k, torch.full((B,), ps))
    return tiny


def projection_standin(nbytes: int = 8 << 20) -> Callable[[], Any]:
    """A callable standing in for the projection that precedes attention in a decode step:
    a bf16 matrix-vector product over ``nbytes`` of weights of its own, on the intra-op
    threads. Run after an evictor (before the op's :func:`code_warmer` call) it leaves the
    cores as a model's previous op does. After the ``clflush`` evictor alone, 8k-token dense
    decode at B=1 took 1.7-1.9 ms in about half the calls and 2.2-2.5 ms in the others; a
    multi-MB op in between (this 8 MB product, or a 4 MB in-place add) removed the slow
    mode, a 512 KB add or a 2 ms pause did not.
    """
    cols = 1024
    w = torch.randn(max(nbytes // (2 * cols), 1), cols).to(torch.bfloat16)
    x = torch.randn(cols).to(torch.bfloat16)
    return lambda: torch.mv(w, x)


def machine_tag() -> str:
    """Short file-name-safe machine tag: ``$SPARSE_ATTN_BENCH_TAG`` or ``<hostname>-<N>c[-gpu]``."""
    tag = os.environ.get("SPARSE_ATTN_BENCH_TAG")
    if not tag:
        host = socket.gethostname().split(".")[0] or "host"
        tag = f"{host}-{os.cpu_count()}c"
        if torch.cuda.is_available():
            tag += "-" + torch.cuda.get_device_name(0).split()[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)[:40]


def _json_safe(x: Any) -> Any:
    """NaN/inf are not JSON: write them as null; tensors/dtypes/paths as plain values."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _json_safe(x.tolist())
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def write_results(name: str, rows: list[dict], meta: dict | None = None,
                  out_dir: str | os.PathLike = "bench/results") -> Path:
    """Write ``<out_dir>/<name>_<YYYYmmdd-HHMMSS>_<machine tag>.json`` (UTC time); return its path.

    The file holds ``{"op", "created_utc", "machine", "meta", "rows"}``; ``machine`` is
    ``meta["machine"]`` when the caller already collected it, else ``machine_info()``.
    """
    meta = dict(meta or {})
    machine = meta.pop("machine", None) or machine_info()
    now = _dt.datetime.now(_dt.timezone.utc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{now.strftime('%Y%m%d-%H%M%S')}_{machine_tag()}.json"
    doc = {
        "op": name,
        "created_utc": now.isoformat(timespec="seconds"),
        "argv": sys.argv,
        "machine": machine,
        "meta": meta,
        "rows": rows,
    }
    path.write_text(json.dumps(_json_safe(doc), indent=1) + "\n")
    return path


def plot(rows: list[dict], path: str | os.PathLike, *, label_key: str = "case",
         time_keys: Sequence[str] | None = None, ratio_key: str | None = None,
         ratio_target: float | None = None, title: str | None = None) -> Path | None:
    """Grouped bar chart of the ``*_ms`` columns per row (log scale), PNG at ``path``.

    With ``ratio_key`` a second panel shows that column per row and ``ratio_target`` as a
    line. Without matplotlib: prints a one-line note and returns None.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        print(f"note: matplotlib not importable, skipping plot {path} (pip install matplotlib)")
        return None
    if not rows:
        return None
    if time_keys is None:
        time_keys = [k for k in rows[0] if k.endswith("_ms")]
    labels = [str(r.get(label_key, i)) for i, r in enumerate(rows)]
    panels = 2 if ratio_key else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(8.0, 0.9 * len(rows) + 3), 4.5 * panels),
                             squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(len(time_keys), 1)
    for j, key in enumerate(time_keys):
        xs = [i + (j - (len(time_keys) - 1) / 2) * width for i in range(len(rows))]
        ys = [r.get(key) if isinstance(r.get(key), (int, float)) else float("nan") for r in rows]
        ax.bar(xs, ys, width=width, label=key.removesuffix("_ms"))
    ax.set_yscale("log")
    ax.set_ylabel("time (ms, median)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if ratio_key:
        ax2 = axes[1][0]
        ys = [r.get(ratio_key) if isinstance(r.get(ratio_key), (int, float)) else float("nan")
              for r in rows]
        ax2.bar(range(len(rows)), ys, color="tab:purple")
        if ratio_target is not None:
            ax2.axhline(ratio_target, color="red", linestyle="--", label=f"target {ratio_target}")
            ax2.legend(fontsize=8)
        ax2.set_ylabel(ratio_key, fontsize=8)
        ax2.set_xticks(range(len(rows)))
        ax2.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def text_table(rows: list[dict], columns: list) -> list[str]:
    """Fixed-width text table: ``columns`` is a list of ``(header, fn(row) -> str)``; the first
    column is left-aligned, the others right-aligned. Returns the lines."""
    cells = [[c[1](r) for c in columns] for r in rows]
    widths = [max([len(c[0])] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(vals):
        return "  ".join(v.rjust(widths[i]) if i else v.ljust(widths[i]) for i, v in enumerate(vals))

    return [line([c[0] for c in columns]), "  ".join("-" * w for w in widths)] + [line(c) for c in cells]


def loadavg() -> list[float] | None:
    """The system load averages (1, 5, 15 min), or None where the OS has none."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def apply_common_args(cfg: Any, args: Any, *, seqlens_field: str | None = "seqlens",
                      dtypes: Mapping[str, Any] | None = None) -> Any:
    """Applies the options every suite shares (--seqlens into ``seqlens_field``, --dtypes
    checked against ``dtypes``, --repeats, --warmup) to a suite config; returns it."""
    if seqlens_field and getattr(args, "seqlens", None):
        setattr(cfg, seqlens_field, list(args.seqlens))
    if dtypes is not None and getattr(args, "dtypes", None):
        cfg.dtypes = list(args.dtypes)
    if getattr(args, "repeats", None):
        cfg.repeats = args.repeats
    if getattr(args, "warmup", None) is not None:
        cfg.warmup = args.warmup
    for d in getattr(cfg, "dtypes", []) if dtypes is not None else []:
        if d not in dtypes:
            raise SystemExit(f"unknown dtype {d!r}; choose from {sorted(dtypes)}")
    return cfg
