"""A schedule simulator for decode work on a GPU: stream-K (LeanAttention) against
FlashDecoding's fixed split and no split, with a lower bound for any schedule.

Work is counted in tiles of ``tile_tokens`` keys of one (sequence, KV head) output; every
tile costs 1, merging one partial costs :func:`merge_cost_tiles` (its bytes over a tile's).
A device has ``sms * occupancy`` workers that run concurrently.

* stream-K, in-kernel fix-up (``stream_k``): all tiles on one line, each worker an equal
  contiguous range (the first ``T mod W`` one tile more, ``stream_k.h``); the host of an
  output (the worker of its first tile) pays the merge cost of every other partial, after
  its own range, as the CUDA kernel's flag-and-merge does.
* stream-K, separate merge (``stream_k_separate``): the same ranges; the merges run after a
  barrier, spread over all workers, as the CPU engine does and as the CUDA engine's
  separate-merge flag does (one more kernel launch, not modelled, as for the fixed split).
* fixed split (FlashDecoding): every output cut into ``s`` equal splits; ``s`` is the
  smallest count whose wave efficiency ``n / (ceil(n / W) * W)`` (``n`` = outputs x ``s``) is
  >= 85% of the best over 1..128, as flash-attention's ``num_splits_heuristic``; work items
  go to the least-loaded worker in order; each output with ``s > 1`` then pays ``s - 1``
  merges in a combine step spread over the workers.
* no split: one work item per output.
* bound: no schedule of whole tiles can finish sooner. With tiles on ``w`` workers, one of
  them holds ``ceil(T / w)`` tiles, and there are at least ``w`` partials, so at least
  ``w - outputs`` merges on top of the ``T`` tiles, at best spread over all ``W`` workers;
  the bound is the least over ``w`` of the larger of the two. A tile holds at least one
  16-token page, so no tile is smaller.

Every schedule is given its best tile (16..256 keys, powers of two; a planner knows the
lengths). ``efficiency = ideal / makespan`` with ``ideal = tokens / W``. Example::

    from sparse_attn.schedule import simulate
    r = simulate([32768, 4096, 1024, 256], num_kv_heads=8)
    r["stream_k"]["efficiency"], r["fixed_split"]["splits"], r["bound"]["efficiency"]
"""
from __future__ import annotations

import heapq
import math
import random
from typing import Optional, Sequence

__all__ = ["DEVICES", "SCHEDULES", "merge_cost_tiles", "simulate", "workloads", "table"]

DEVICES = {"H100": 132, "H200": 132, "A100": 108}


def merge_cost_tiles(tile_tokens: int, group: int = 4, head_dim: int = 128) -> float:
    """Cost of merging one partial, in tiles: a partial is ``group`` output rows of
    ``head_dim`` float32 plus two floats each, written once and read once; a tile reads
    ``tile_tokens`` keys and values of ``head_dim`` bf16."""
    return (2 * group * (head_dim + 2) * 4) / (tile_tokens * head_dim * 2 * 2)


def _list_schedule(items: Sequence[float], workers: int) -> float:
    """Makespan of items handed in order to the least-loaded worker."""
    loads = [0.0] * min(workers, max(len(items), 1))
    heapq.heapify(loads)
    for x in items:
        heapq.heappush(loads, heapq.heappop(loads) + x)
    return max(loads) if loads else 0.0


def _stream_k(tiles: list[int], workers: int, merge_cost: float, separate: bool = False) -> float:
    total = sum(tiles)
    q, r = divmod(total, workers)

    def worker_of(t: int) -> int:
        return t // (q + 1) if t < r * (q + 1) else r + (t - r * (q + 1)) // q

    load = [q + (1 if w < r else 0) for w in range(workers)]
    t = merges = 0
    for n in tiles:
        if n:
            host, last = worker_of(t), worker_of(t + n - 1)
            merges += last - host
            if not separate:  # the host merges the other partials itself
                load[host] += merge_cost * (last - host)
        t += n
    return float(max(load)) + (merge_cost * merges / workers if separate else 0.0)


def _bound(tiles: list[int], workers: int, merge_cost: float) -> float:
    """Lower bound on the makespan of any schedule of these whole tiles (module docstring)."""
    total, outputs = sum(tiles), sum(1 for n in tiles if n)
    return min(max(math.ceil(total / w), (total + merge_cost * max(0, w - outputs)) / workers)
               for w in range(1, min(workers, total) + 1))


def _fixed_split(tiles: list[int], workers: int, merge_cost: float) -> tuple[float, int]:
    outputs = sum(1 for n in tiles if n)
    if outputs == 0:
        return 0.0, 1
    effs = []
    for s in range(1, 129):
        n = outputs * s
        effs.append(n / (math.ceil(n / workers) * workers))
    best = max(effs)
    s = next(i + 1 for i, e in enumerate(effs) if e >= 0.85 * best)
    items = []
    for n in tiles:
        if n:
            per = math.ceil(n / s)
            items += [min(per, n - k * per) for k in range(s) if n - k * per > 0]
    makespan = _list_schedule(items, workers)
    combine = merge_cost * (s - 1) * outputs / workers if s > 1 else 0.0
    return makespan + combine, s


SCHEDULES = ("stream_k", "stream_k_separate", "fixed_split", "no_split", "bound")


def simulate(lengths: Sequence[int], num_kv_heads: int, *, device: str = "H100", occupancy: int = 1,
             tile_tokens: Optional[int] = None, group: int = 4, head_dim: int = 128, per_head_tokens=None) -> dict:
    """Makespan and efficiency of each schedule (:data:`SCHEDULES`) for one decode step.

    ``lengths``: tokens each sequence reads per KV head (``per_head_tokens``, a
    ``[B][num_kv_heads]`` nested list, overrides it per head, e.g. Quest budgets). A merge
    costs :func:`merge_cost_tiles`. Without ``tile_tokens`` each schedule gets the tile
    (16..256 keys, powers of two) that minimizes its makespan. Returns per schedule
    ``makespan`` (in tokens of one KV head), ``efficiency`` (ideal / makespan, ideal = total
    tokens / workers, merges not counted) and ``tile_tokens``; the fixed split also reports
    ``splits``. The top-level ``tile_tokens`` and ``tiles`` are stream-K's (fix-up).
    """
    if device not in DEVICES:
        raise ValueError(f"simulate: device must be one of {sorted(DEVICES)}, got {device!r}")
    if num_kv_heads < 1 or occupancy < 1:
        raise ValueError("simulate: num_kv_heads and occupancy must be >= 1")
    if any(n < 0 for n in lengths):
        raise ValueError("simulate: lengths must be >= 0")
    if tile_tokens is not None and tile_tokens < 1:
        raise ValueError(f"simulate: tile_tokens must be >= 1, got {tile_tokens}")
    workers = DEVICES[device] * occupancy
    tokens = per_head_tokens or [[n] * num_kv_heads for n in lengths]
    flat = [n for row in tokens for n in row]
    ideal = sum(flat) / workers
    if ideal == 0:
        out = {"workers": workers, "tile_tokens": tile_tokens or 256, "tiles": 0, "ideal": 0.0}
        for k in SCHEDULES:
            out[k] = {"makespan": 0.0, "efficiency": 1.0, "tile_tokens": out["tile_tokens"]}
        out["fixed_split"]["splits"] = 1
        return out

    def run(tile: int) -> dict:
        tiles = [math.ceil(n / tile) for n in flat]
        mc = merge_cost_tiles(tile, group, head_dim)
        fs, s = _fixed_split(tiles, workers, mc)
        r = {"stream_k": _stream_k(tiles, workers, mc), "stream_k_separate": _stream_k(tiles, workers, mc, True),
             "fixed_split": fs, "no_split": _list_schedule([n for n in tiles if n], workers),
             "bound": _bound(tiles, workers, mc)}
        return {"tile_tokens": tile, "tiles": sum(tiles), "splits": s, **{k: v * tile for k, v in r.items()}}

    cands = [run(tile_tokens)] if tile_tokens else [run(t) for t in (16, 32, 64, 128, 256)]
    out = {"workers": workers, "ideal": ideal}
    for k in SCHEDULES:
        best = min(cands, key=lambda r: r[k])
        out[k] = {"makespan": best[k], "efficiency": ideal / best[k], "tile_tokens": best["tile_tokens"]}
        if k == "stream_k":
            out["tile_tokens"], out["tiles"] = best["tile_tokens"], best["tiles"]
        if k == "fixed_split":
            out[k]["splits"] = best["splits"]
    return out


def workloads(seed: int = 0) -> list[tuple[str, list[int], Optional[list[list[int]]]]]:
    """The table's workloads: batch 1, 4, 16, 64 x uniform / ragged / heavy-tailed lengths in
    [1k, 512k], plus Quest-selected budgets (per-head selected tokens)."""
    rng = random.Random(seed)
    out = []
    for b in (1, 4, 16, 64):
        out.append((f"B={b} uniform 32k", [32768] * b, None))
        out.append((f"B={b} ragged 1k-512k", [rng.randint(1024, 524288) for _ in range(b)], None))
        heavy = [min(524288, max(1024, int(1024 * rng.paretovariate(0.8)))) for _ in range(b)]
        out.append((f"B={b} heavy-tailed", heavy, None))
        for budget in (2048, 4096):
            lens = [rng.randint(1024, 524288) for _ in range(b)]
            # per KV head: its selection, at most the budget, some heads fewer (short context)
            sel = [[min(n, budget - rng.randint(0, budget // 4)) for _ in range(8)] for n in lens]
            out.append((f"B={b} Quest {budget}", lens, sel))
    return out


def table(num_kv_heads: int = 8, device: str = "H100", **kw) -> list[dict]:
    """One row per workload of :func:`workloads`: each schedule's efficiency, the fixed
    split's split count, and the fixed split's makespan over each stream-K variant's."""
    rows = []
    for name, lens, sel in workloads():
        r = simulate(lens, num_kv_heads, device=device, per_head_tokens=sel, **kw)
        row = {"workload": name, "tiles": r["tiles"], "tile_tokens": r["tile_tokens"]}
        row.update({k: r[k]["efficiency"] for k in SCHEDULES})
        row["splits"] = r["fixed_split"]["splits"]
        row["stream_k_vs_fixed"] = r["fixed_split"]["makespan"] / r["stream_k"]["makespan"]
        row["stream_k_separate_vs_fixed"] = r["fixed_split"]["makespan"] / r["stream_k_separate"]["makespan"]
        rows.append(row)
    return rows
