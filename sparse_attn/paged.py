"""Paged KV cache and query-aware page selection (Quest) for decode.

A :class:`PagedKVCache` holds one layer's keys and values in fixed-size pages (vLLM's
layout) plus, per page and KV head, the channel-wise max and min of the stored keys. For a
query ``q`` the Quest bound ``sum_d max(q_d * kmax_d, q_d * kmin_d)`` is at least ``q . k`` for
every key of the page, so decode can read only the pages with the highest bounds.

Example::

    import torch, sparse_attn
    cache = sparse_attn.PagedKVCache(num_pages=1024, page_size=16, heads_kv=2, head_dim=64,
                                     batch_size=2, max_pages_per_seq=256, dtype=torch.bfloat16)
    k = torch.randn(2, 1000, 2, 64, dtype=torch.bfloat16); v = torch.randn_like(k)
    cache.prefill(k, v, seqlens=torch.tensor([1000, 700]))
    q = torch.randn(2, 8, 64, dtype=torch.bfloat16)              # one new token per sequence
    cache.append(torch.randn(2, 2, 64, dtype=torch.bfloat16), torch.randn(2, 2, 64, dtype=torch.bfloat16))
    out = sparse_attn.quest_decode(q, cache, token_budget=256)    # [2, 8, 64]
"""
from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from ._ops import ops

__all__ = ["PagedKVCache", "quest_scores", "select_pages", "paged_decode_attention", "quest_decode", "DecodePlan",
           "plan_decode"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_HUGE = 2 << 20  # an x86-64 transparent huge page
_HUGE_MIN_BYTES = 8 << 20


def _madvise_huge(addr: int, nbytes: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(nbytes), 14) == 0  # MADV_HUGEPAGE
    except (OSError, AttributeError):
        return False


def _zeros_pool(shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.zeros(shape)``; on Linux CPUs a pool of 8 MB or more is 2 MB aligned and asks
    for transparent huge pages before its first touch.

    Quest reads selected pages' 4 KB K/V blocks scattered over the pool: with 4 KB memory
    pages each block is a TLB miss. Measured cold at B=1, 32k tokens, 8 KV heads: selected
    attention 0.63-0.69 -> 0.55-0.57 ms, dense paged decode 8.15 -> 7.65 ms.
    ``SPARSE_ATTN_HUGE_PAGES=0`` turns this off; where THP is off it is a no-op.
    """
    dev = torch.device(device)
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    if (dev.type != "cpu" or not sys.platform.startswith("linux") or nbytes < _HUGE_MIN_BYTES
            or os.environ.get("SPARSE_ATTN_HUGE_PAGES", "1") == "0"):
        return torch.zeros(shape, dtype=dtype, device=dev)
    raw = torch.empty(nbytes + _HUGE, dtype=torch.uint8)  # not touched yet: no memory page is backed
    offset = -raw.data_ptr() % _HUGE
    pool = raw[offset:offset + nbytes].view(dtype).view(shape)
    _madvise_huge(pool.data_ptr(), nbytes)  # best effort
    return pool.zero_()


def _check_int(name: str, value, minimum: int, op: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{op}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_group_reduce(group_reduce, op: str) -> None:
    if group_reduce not in ("max", "sum"):
        raise ValueError(f"{op}: group_reduce must be 'max' or 'sum', got {group_reduce!r}")


def _check_selection_args(token_budget, sink_pages, recent_pages, op: str) -> None:
    _check_int("token_budget", token_budget, 1, op)
    _check_int("sink_pages", sink_pages, 0, op)
    _check_int("recent_pages", recent_pages, 0, op)


class PagedKVCache:
    """One layer's paged KV cache (make one per layer: layers fill and evict together, but
    their keys differ, and per-layer objects keep each op's arguments one tensor each).

    Attributes: ``k_pages, v_pages [num_pages, page_size, heads_kv, head_dim]`` (views of
    head-major storage: each (page, KV head) block of rows is contiguous),
    ``k_max, k_min [num_pages, heads_kv, head_dim]`` (exact max/min of the stored keys of
    every page, i.e. after RoPE if the caller applied it), ``page_table int32 [batch,
    max_pages_per_seq]`` (logical page -> page id; -1 where none), ``seqlens int32 [batch]``.
    Pages come from a free list; :meth:`free` returns a sequence's pages to it.
    """

    def __init__(self, num_pages: int, page_size: int, heads_kv: int, head_dim: int, *, batch_size: int,
                 max_pages_per_seq: int, dtype: torch.dtype = torch.bfloat16, device="cpu"):
        op = "PagedKVCache"
        for name, val in (("num_pages", num_pages), ("heads_kv", heads_kv), ("head_dim", head_dim),
                          ("batch_size", batch_size), ("max_pages_per_seq", max_pages_per_seq)):
            _check_int(name, val, 1, op)
        _check_int("page_size", page_size, 1, op)
        if page_size & (page_size - 1):
            raise ValueError(f"{op}: page_size must be a power of two, got {page_size}")
        if dtype not in _DTYPES:
            raise ValueError(f"{op}: dtype must be float32, bfloat16 or float16, got {dtype}")
        self.page_size = page_size
        # Logical shape [num_pages, page_size, heads_kv, head_dim] (vLLM's), stored head-major
        # within a page: the page_size rows of one (page, KV head) are one contiguous block
        # (4 KB for 16 x 128 bf16), which decode streams, instead of rows 2 KB apart.
        shape = (num_pages, heads_kv, page_size, head_dim)
        self.k_pages = _zeros_pool(shape, dtype, device).transpose(1, 2)
        self.v_pages = _zeros_pool(shape, dtype, device).transpose(1, 2)
        self.k_max = _zeros_pool((num_pages, heads_kv, head_dim), dtype, device)
        self.k_min = _zeros_pool((num_pages, heads_kv, head_dim), dtype, device)
        self.page_table = torch.full((batch_size, max_pages_per_seq), -1, dtype=torch.int32, device=device)
        self.seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self._free = list(range(num_pages - 1, -1, -1))  # a stack: low ids first
        self._owned = [[] for _ in range(batch_size)]

    @property
    def num_pages(self) -> int:
        return self.k_pages.shape[0]

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def free(self, b: int) -> None:
        """Empties sequence ``b`` and returns its pages to the free list."""
        self._free.extend(reversed(self._owned[b]))
        self._owned[b] = []
        self.page_table[b] = -1
        self.seqlens[b] = 0

    def _reserve(self, new_lengths: list[int], op: str) -> None:
        """Allocates the pages the sequences need to reach new_lengths; raises before
        touching anything if the pool or a page table row is too small."""
        need = [max(-(-n // self.page_size) - len(self._owned[b]), 0) for b, n in enumerate(new_lengths)]
        for b, n in enumerate(new_lengths):
            if -(-n // self.page_size) > self.page_table.shape[1]:
                raise ValueError(f"{op}: sequence {b} would need {-(-n // self.page_size)} pages, more than "
                                 f"max_pages_per_seq = {self.page_table.shape[1]}")
        if sum(need) > len(self._free):
            raise ValueError(f"{op}: the page pool is full ({len(self._free)} free pages, {sum(need)} needed); "
                             f"nothing was written")
        for b, n in enumerate(need):
            if n == 0:
                continue
            pages = [self._free.pop() for _ in range(n)]
            first = len(self._owned[b])
            # one slice write per sequence (a per-page tensor write cost ~0.2 s per 8k-token forward)
            self.page_table[b, first:first + n] = torch.tensor(pages, dtype=self.page_table.dtype)
            self._owned[b].extend(pages)

    def _write(self, k, v, batch_idx, positions, op):
        """Writes token rows k/v [N, Hkv, D] of sequences batch_idx at positions (tensors [N])."""
        logical = positions // self.page_size
        page_ids = self.page_table[batch_idx.long(), logical.long()].to(torch.int32).contiguous()
        slots = (positions % self.page_size).to(torch.int32).contiguous()
        ops.paged_kv_write(self.k_pages, self.v_pages, self.k_max, self.k_min, k, v, page_ids, slots)

    def _check_tokens(self, k, v, op, ndim):
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != ndim:
                raise ValueError(f"{op}: {name} must be a {ndim}-d tensor, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if t.dtype != self.k_pages.dtype or t.shape[-2:] != self.k_pages.shape[-2:]:
                raise ValueError(f"{op}: {name} must be {self.k_pages.dtype} with (heads_kv, head_dim) = "
                                 f"{tuple(self.k_pages.shape[-2:])}, got {t.dtype} {tuple(t.shape)}")
            if t.shape[0] != self.batch_size:
                raise ValueError(f"{op}: {name} must have batch {self.batch_size}, got {tuple(t.shape)}")

    @property
    def batch_size(self) -> int:
        return self.page_table.shape[0]

    def prefill(self, k: torch.Tensor, v: torch.Tensor, seqlens) -> None:
        """Replaces every sequence with a prompt: ``k, v [B, S, heads_kv, head_dim]`` padded,
        ``seqlens [B]`` the valid lengths (ragged)."""
        op = "PagedKVCache.prefill"
        self._check_tokens(k, v, op, 4)
        lens = torch.as_tensor(seqlens).to(torch.int64).cpu()
        if lens.shape != (self.batch_size,) or bool((lens < 0).any()) or bool((lens > k.shape[1]).any()):
            raise ValueError(f"{op}: seqlens must be [{self.batch_size}] in [0, {k.shape[1]}], got {lens.tolist()}")
        old = [list(o) for o in self._owned], self.page_table.clone(), self.seqlens.clone(), list(self._free)
        for b in range(self.batch_size):
            self.free(b)
        try:
            self._reserve(lens.tolist(), op)
        except ValueError:
            self._owned, self._free = old[0], old[3]
            self.page_table.copy_(old[1])
            self.seqlens.copy_(old[2])
            raise
        b_idx = torch.repeat_interleave(torch.arange(self.batch_size), lens)
        pos = torch.cat([torch.arange(int(n)) for n in lens]) if len(lens) else torch.zeros(0, dtype=torch.int64)
        dev = k.device
        self._write(k[b_idx.to(dev), pos.to(dev)], v[b_idx.to(dev), pos.to(dev)], b_idx.to(dev), pos.to(dev), op)
        self.seqlens.copy_(lens.to(torch.int32))

    def extend(self, k: torch.Tensor, v: torch.Tensor, spans) -> None:
        """Appends a ragged chunk: rows ``k[b, r0:r1], v[b, r0:r1]`` of ``k, v [B, S, heads_kv,
        head_dim]`` go after sequence b's tokens, for ``spans[b] = (r0, r1)``. Raises before
        writing anything if the pool or a page table row is too small."""
        op = "PagedKVCache.extend"
        self._check_tokens(k, v, op, 4)
        spans = [(int(r0), int(r1)) for r0, r1 in spans]
        if len(spans) != self.batch_size or any(not 0 <= r0 <= r1 <= k.shape[1] for r0, r1 in spans):
            raise ValueError(f"{op}: spans must be {self.batch_size} (r0, r1) pairs with 0 <= r0 <= r1 <= "
                             f"{k.shape[1]}, got {spans}")
        start = self.seqlens.to(torch.int64).cpu()
        lens = torch.tensor([r1 - r0 for r0, r1 in spans], dtype=torch.int64)
        self._reserve((start + lens).tolist(), op)
        dev = k.device
        if self.batch_size == 1:  # the rows are a view: no gathered copy of the chunk
            r0, r1 = spans[0]
            pos = torch.arange(int(start[0]), int(start[0]) + r1 - r0, device=dev)
            self._write(k[0, r0:r1], v[0, r0:r1], torch.zeros_like(pos), pos, op)
        else:
            b_idx = torch.repeat_interleave(torch.arange(self.batch_size), lens)
            rows = torch.cat([torch.arange(r0, r1) for r0, r1 in spans])
            pos = torch.cat([torch.arange(int(s), int(s) + int(n)) for s, n in zip(start, lens)])
            self._write(k[b_idx.to(dev), rows.to(dev)], v[b_idx.to(dev), rows.to(dev)], b_idx.to(dev), pos.to(dev),
                        op)
        self.seqlens += lens.to(torch.int32).to(self.seqlens.device)

    def can_hold(self, lengths) -> bool:
        """Whether every sequence b can grow to ``lengths[b]`` tokens without a new pool."""
        need = [-(-int(n) // self.page_size) for n in lengths]
        extra = sum(max(n - len(self._owned[b]), 0) for b, n in enumerate(need))
        return max(need, default=0) <= self.page_table.shape[1] and extra <= len(self._free)

    def grown(self, num_pages: int, max_pages_per_seq: int) -> "PagedKVCache":
        """A copy in a larger pool (same page ids and contents; the new pages are free)."""
        n, w = self.num_pages, self.page_table.shape[1]
        if num_pages < n or max_pages_per_seq < w:
            raise ValueError(f"PagedKVCache.grown: the new pool ({num_pages} pages, {max_pages_per_seq} per sequence) "
                             f"must be at least the current one ({n}, {w})")
        Hkv, D = self.k_pages.shape[2], self.k_pages.shape[3]
        new = PagedKVCache(num_pages, self.page_size, Hkv, D, batch_size=self.batch_size,
                           max_pages_per_seq=max_pages_per_seq, dtype=self.k_pages.dtype, device=self.k_pages.device)
        for dst, src in ((new.k_pages, self.k_pages), (new.v_pages, self.v_pages), (new.k_max, self.k_max),
                         (new.k_min, self.k_min)):
            dst[:n].copy_(src)
        new.page_table[:, :w].copy_(self.page_table)
        new.seqlens.copy_(self.seqlens)
        new._owned = [list(o) for o in self._owned]
        new._free = list(range(num_pages - 1, n - 1, -1)) + list(self._free)
        return new

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Appends one decode step: ``k, v [B, heads_kv, head_dim]``, one token per sequence."""
        op = "PagedKVCache.append"
        self._check_tokens(k, v, op, 3)
        pos = self.seqlens.to(torch.int64).cpu()
        self._reserve((pos + 1).tolist(), op)
        b_idx = torch.arange(self.batch_size)
        dev = k.device
        self._write(k, v, b_idx.to(dev), pos.to(dev), op)
        self.seqlens += 1


def quest_scores(q: torch.Tensor, cache: PagedKVCache, *, group_reduce: str = "max") -> torch.Tensor:
    """Quest bounds ``float32 [B, heads_kv, max_pages_per_seq]`` (-inf past each sequence).

    ``q [B, heads_q, head_dim]``. The bound of each query head of a KV head's group is reduced
    with ``max`` (default) or ``sum``, so a KV head's pages are read once for the group.
    No softmax scale.
    """
    _check_group_reduce(group_reduce, "quest_scores")
    return ops.quest_scores(q, cache.k_max, cache.k_min, cache.page_table, cache.seqlens, cache.page_size,
                            group_reduce == "sum")


def select_pages(scores: torch.Tensor, cache: PagedKVCache, *, token_budget: int, sink_pages: int = 1,
                 recent_pages: int = 1):
    """Top pages per (sequence, KV head): ``(pages int32 [B, heads_kv, K], counts int32 [B, heads_kv])``.

    ``K = ceil(token_budget / page_size)`` (at least sink + recent pages). The first
    ``sink_pages`` and the last ``recent_pages`` pages (the current, partly filled one) are
    always in; the rest go by score. A sequence with at most K pages takes all of them (dense).
    Pages are logical indices, ascending; entries past ``counts`` are 0.
    """
    op = "select_pages"
    _check_selection_args(token_budget, sink_pages, recent_pages, op)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3 or scores.shape[0] != cache.batch_size:
        raise ValueError(f"{op}: scores must be [batch={cache.batch_size}, heads_kv, max_pages], got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    # Ties (and NaN, ranked lowest) go to the lower page index, as in the reference.
    return ops.quest_select(scores.to(torch.float32), cache.seqlens, cache.page_size, token_budget, sink_pages,
                            recent_pages)


@dataclass
class DecodePlan:
    """A stream-K decode schedule (LeanAttention) for one cache state and page selection.

    The outputs (sequence, KV head) in order, each with ``ceil(pages / tile_pages)`` tiles,
    lie on one line that ``workers`` workers split evenly (the first ``T mod workers`` get one
    tile more); a worker's range may span several outputs, and an output spread over several
    workers is merged after a barrier, in worker order (deterministic). Holds its workspace,
    so running it allocates nothing per call. It goes stale when the tile counts change (a
    sequence grows past a tile, another selection): running a stale plan raises.
    """
    offsets: torch.Tensor  # int64 [B * H_kv + 1], first tile of each output
    slot_base: torch.Tensor  # int64 [B * H_kv + 1], first partial slot of each output
    workers: int
    tile_pages: int
    selected: bool  # built for a page selection (pages/counts) rather than every page
    ws_state: torch.Tensor  # float32 [slots, G, 2]
    ws_acc: torch.Tensor  # float32 [slots, G, head_dim]

    @property
    def total_tiles(self) -> int:
        return int(self.offsets[-1])


def cuda_max_workers(k_pages: torch.Tensor, heads_q: int) -> int:
    """CTAs of the CUDA decode kernel resident at once for ``k_pages``' dtype, head_dim and device
    with ``heads_q`` query heads: the default worker count of a CUDA plan."""
    from . import _C

    return _C.cuda_decode_max_workers(k_pages.device.index, str(k_pages.dtype).removeprefix("torch."),
                                      k_pages.shape[3], heads_q // k_pages.shape[2])


def plan_decode(cache: PagedKVCache, *, heads_q: int, pages: Optional[torch.Tensor] = None,
                counts: Optional[torch.Tensor] = None, num_workers: Optional[int] = None,
                tile_tokens: Optional[int] = None) -> DecodePlan:
    """Plans stream-K decode over ``cache`` (every page, or the selection ``pages``/``counts``
    of :func:`select_pages`) for ``heads_q`` query heads; run it with
    ``paged_decode_attention(q, cache, pages=..., counts=..., plan=plan)``.

    ``num_workers`` defaults to ``torch.get_num_threads()`` (on a CUDA cache: the decode
    kernel's resident CTAs on the device, one CTA per worker); a tile is ``tile_tokens`` tokens
    (default 256, rounded to whole pages). Planning is separate from running so a serving
    loop can reuse a plan while the tile counts stay the same.

    Example::

        import torch, sparse_attn
        cache = sparse_attn.PagedKVCache(64, 16, 2, 64, batch_size=2, max_pages_per_seq=32)
        k = torch.randn(2, 300, 2, 64, dtype=torch.bfloat16)
        cache.prefill(k, k, seqlens=torch.tensor([300, 20]))
        plan = sparse_attn.plan_decode(cache, heads_q=8, num_workers=2)
        out = sparse_attn.paged_decode_attention(torch.randn(2, 8, 64, dtype=torch.bfloat16), cache, plan=plan)
    """
    from . import _C

    op = "plan_decode"
    Hkv, D, ps = cache.k_pages.shape[2], cache.k_pages.shape[3], cache.page_size
    _check_int("heads_q", heads_q, 1, op)
    if heads_q % Hkv:
        raise ValueError(f"{op}: heads_q ({heads_q}) must be a multiple of the cache's heads_kv ({Hkv})")
    on_cuda = cache.k_pages.is_cuda
    if num_workers is not None:
        workers = _check_int("num_workers", num_workers, 1, op)
    elif on_cuda:  # one CTA per worker, as many as are resident at once (the in-kernel fix-up needs that)
        workers = cuda_max_workers(cache.k_pages, heads_q)
    else:
        workers = torch.get_num_threads()
    tile_pages = max(1, (256 if tile_tokens is None else _check_int("tile_tokens", tile_tokens, 1, op)) // ps)
    if (pages is None) != (counts is None):
        raise ValueError(f"{op}: pages and counts must be given together")
    if counts is not None:
        if counts.shape != (cache.batch_size, Hkv):
            raise ValueError(f"{op}: counts must be [{cache.batch_size}, {Hkv}], got {tuple(counts.shape)}")
        per_output = counts.to(torch.int64).reshape(-1)
    else:
        npages = (cache.seqlens.to(torch.int64) + ps - 1) // ps
        per_output = npages.repeat_interleave(Hkv)
    tiles = ((per_output + tile_pages - 1) // tile_pages).tolist()
    slots = _C.stream_k_slots(tiles, workers)
    offsets = torch.zeros(len(tiles) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(tiles, dtype=torch.int64).cumsum(0) if tiles else offsets[1:]
    slot_base = torch.zeros(len(tiles) + 1, dtype=torch.int64)
    slot_base[1:] = torch.tensor(slots, dtype=torch.int64).cumsum(0) if slots else slot_base[1:]
    n = int(slot_base[-1])
    G = heads_q // Hkv
    dev = cache.k_pages.device
    # On CUDA, ws_state also holds one int32 flag per slot after the n * G * 2 states (extra
    # rows, zeroed; each launch leaves them zero). offsets / slot_base stay on the host: the op
    # checks them there and copies them to the device.
    extra = -(-n // (2 * G)) if on_cuda else 0
    ws_state = (torch.zeros if on_cuda else torch.empty)(n + extra, G, 2, dtype=torch.float32, device=dev)
    return DecodePlan(offsets, slot_base, workers, tile_pages, pages is not None, ws_state,
                      torch.empty(n, G, D, dtype=torch.float32, device=dev))


def _decode_query(q, cache: PagedKVCache, out: Optional[torch.Tensor], scale: Optional[float], op: str):
    """Checks a decode query against the cache; returns ``(out, scale)`` with their defaults."""
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError(f"{op}: q must be [batch, heads_q, head_dim], got "
                         f"{tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
    if q.dtype != cache.k_pages.dtype:
        raise ValueError(f"{op}: q must have the cache's dtype {cache.k_pages.dtype}, got {q.dtype}")
    sc = float(q.shape[-1] ** -0.5) if scale is None else float(scale)
    return (torch.empty_like(q) if out is None else out), sc


def paged_decode_attention(q: torch.Tensor, cache: PagedKVCache, *, pages: Optional[torch.Tensor] = None,
                           counts: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                           return_lse: bool = False, out: Optional[torch.Tensor] = None,
                           plan: Optional[DecodePlan] = None):
    """Decode attention of one new token per sequence over the paged cache.

    ``q [B, heads_q, head_dim]`` (GQA: query head h reads KV head h // (heads_q / heads_kv)).
    With ``pages``/``counts`` (from :func:`select_pages`) KV head g of sequence b reads only
    its listed logical pages; otherwise every page (dense). Ragged sequences. With ``plan``
    (:func:`plan_decode`, built for the same cache state and selection) the work is split
    stream-K over the plan's workers; otherwise by fixed chunks of pages. Returns ``out``
    ``[B, heads_q, head_dim]`` or ``(out, lse [B, heads_q])``.
    """
    out, sc = _decode_query(q, cache, out, scale, "paged_decode_attention")
    if plan is None:
        lse = ops.paged_decode_attention(q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, pages,
                                         counts, out, sc)
    else:
        if not isinstance(plan, DecodePlan) or plan.selected != (pages is not None):
            raise ValueError("paged_decode_attention: plan must be a DecodePlan built for the same selection "
                             "(with pages/counts if and only if they are passed here)")
        if plan.ws_state.shape[1] * cache.k_pages.shape[2] != q.shape[1]:
            raise ValueError(f"paged_decode_attention: the plan was built for {plan.ws_state.shape[1]} query heads per "
                             f"KV head, q has {q.shape[1]} heads for {cache.k_pages.shape[2]} KV heads")
        lse = ops.paged_decode_stream_k(q, cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, pages,
                                        counts, out, sc, plan.offsets, plan.slot_base, plan.workers, plan.tile_pages,
                                        plan.ws_state, plan.ws_acc)
    return (out, lse) if return_lse else out


def quest_decode(q: torch.Tensor, cache: PagedKVCache, *, token_budget: int, group_reduce: str = "max",
                 sink_pages: int = 1, recent_pages: int = 1, scale: Optional[float] = None,
                 return_lse: bool = False, out: Optional[torch.Tensor] = None):
    """One Quest decode step: :func:`quest_scores`, :func:`select_pages`, then
    :func:`paged_decode_attention` over the selected pages (on the CPU as one op, with the
    same results). Returns ``out [B, heads_q, head_dim]`` or ``(out, lse [B, heads_q])``.

    Example::

        import torch, sparse_attn
        cache = sparse_attn.PagedKVCache(64, 16, 2, 64, batch_size=1, max_pages_per_seq=64)
        k = torch.randn(1, 600, 2, 64, dtype=torch.bfloat16)
        cache.prefill(k, k, seqlens=torch.tensor([600]))
        q = torch.randn(1, 8, 64, dtype=torch.bfloat16)
        out = sparse_attn.quest_decode(q, cache, token_budget=128)  # 8 of 38 pages per KV head
    """
    if cache.k_pages.device.type == "cpu":
        _check_selection_args(token_budget, sink_pages, recent_pages, "quest_decode")
        _check_group_reduce(group_reduce, "quest_decode")
        out, sc = _decode_query(q, cache, out, scale, "quest_decode")
        lse = ops.quest_decode(q, cache.k_pages, cache.v_pages, cache.k_max, cache.k_min, cache.page_table,
                               cache.seqlens, group_reduce == "sum", token_budget, sink_pages, recent_pages, out, sc)
        return (out, lse) if return_lse else out
    scores = quest_scores(q, cache, group_reduce=group_reduce)
    pages, counts = select_pages(scores, cache, token_budget=token_budget, sink_pages=sink_pages,
                                 recent_pages=recent_pages)
    return paged_decode_attention(q, cache, pages=pages, counts=counts, scale=scale, return_lse=return_lse,
                                  out=out)
