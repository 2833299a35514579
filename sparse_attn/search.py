"""Offline per-head pattern search: pick the cheapest sparse pattern that keeps enough attention.

For each layer and query head the search evaluates candidate patterns on a calibration input
and keeps the cheapest one whose *attention recall* reaches a target (default 0.95), else
dense. The recall of a pattern is the share of the true (dense, causal) softmax mass its mask
keeps, averaged over query rows; its *cost* is the share of the dense causal work its kernel
computes (:func:`computed_fraction`, counted in key blocks and gathered columns, so a
pattern that touches many blocks sparsely costs what the kernel pays). Recall is computed
one query block at a time (``[block, Sk]`` float32 scores per head), so memory stays bounded
however long the sequence: the N x N matrix is never built.

Candidates (tuples; each is evaluated for every query head at once):

* ``("dense",)``
* ``("streaming", sink_tokens, window_tokens)``
* ``("vertical_slash", vertical [B|1, H|1, NV], slash [B|1, H|1, NS])`` (main diagonal always in)
* ``("block_sparse", BlockSparseMask)``

The run-time patterns behind them (what :mod:`sparse_attn.hf` runs, and what
:func:`search_layer` evaluates, through the same run-time estimators) are :class:`Pattern`\\ s:
``Pattern("vertical_slash", {"n_vertical": 128, "n_slash": 512})`` etc.

Example::

    import torch
    from sparse_attn.search import attention_recall, search_layer
    q = torch.randn(1, 512, 4, 64); k = torch.randn(1, 512, 2, 64)
    r = attention_recall(q, k, [("dense",), ("streaming", 16, 128)])   # [2 candidates, B, Hq]
    picks = search_layer(q, k, target_recall=0.9)                       # one dict per query head
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .masks import BlockSparseMask, estimate_block_sparse
from .vertical_slash_estimator import estimate_vertical_slash

__all__ = ["Pattern", "attention_recall", "evaluate_candidates", "default_patterns", "search_layer", "search_model",
           "pick_pattern", "computed_fraction"]

KINDS = ("dense", "streaming", "vertical_slash", "block_sparse")


@dataclass(frozen=True)
class Pattern:
    """A run-time sparse pattern of one head: ``kind`` in :data:`KINDS` and its parameters.

    * dense: ``{}``
    * streaming: ``sink_tokens``, ``window_tokens``
    * vertical_slash: ``n_vertical``, ``n_slash`` (estimated at run time from the last
      ``last_q`` queries, :func:`~sparse_attn.estimate_vertical_slash`)
    * block_sparse: ``density``, ``block_size`` (estimated at run time from pooled q . k,
      :func:`~sparse_attn.estimate_block_sparse`)
    """
    kind: str
    params: Dict[str, float] = field(default_factory=dict)

    _REQUIRED = {"dense": (), "streaming": ("sink_tokens", "window_tokens"),
                 "vertical_slash": ("n_vertical", "n_slash"), "block_sparse": ("density", "block_size")}

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Pattern: unknown kind {self.kind!r}, expected one of {KINDS}")
        missing = [p for p in self._REQUIRED[self.kind] if p not in self.params]
        if missing:
            raise ValueError(f"Pattern {self.kind}: missing parameter(s) {missing}")
        for name, val in self.params.items():
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
                raise ValueError(f"Pattern {self.kind}: parameter {name} must be a finite number >= 0, got {val!r}")
        if self.kind == "block_sparse" and not 0 < self.params["density"] <= 1:
            raise ValueError(f"Pattern block_sparse: density must be in (0, 1], got {self.params['density']}")

    def key(self):
        return (self.kind, tuple(sorted(self.params.items())))

    def __hash__(self):
        return hash(self.key())

    def to_json(self) -> dict:
        return {"pattern": self.kind, "params": dict(self.params)}

    def candidate(self, q: torch.Tensor, k: torch.Tensor):
        """The recall candidate this pattern gives on (q, k), through the run-time estimators."""
        p = self.params
        if self.kind == "dense":
            return ("dense",)
        if self.kind == "streaming":
            return ("streaming", int(p["sink_tokens"]), int(p["window_tokens"]))
        if self.kind == "vertical_slash":
            v, s = estimate_vertical_slash(q, k, n_vertical=int(p["n_vertical"]), n_slash=int(p["n_slash"]),
                                           last_q=int(p.get("last_q", 64)))
            return ("vertical_slash", v, s)
        return ("block_sparse", estimate_block_sparse(q, k, block_size=int(p["block_size"]),
                                                      density=float(p["density"])))


def default_patterns() -> List[Pattern]:
    """The candidates :func:`search_layer` tries by default (token budgets fit 4k-32k inputs)."""
    # A fine ladder: a head takes the cheapest rung that reaches the target, so gaps between
    # rungs are paid in cost (at 8k, recall 0.99 needs cost 0.1-0.9 depending on the head).
    pats = [Pattern("streaming", {"sink_tokens": 64, "window_tokens": w}) for w in (256, 512, 1024, 2048, 3072, 4096)]
    pats += [Pattern("vertical_slash", {"n_vertical": nv, "n_slash": ns})
             for nv, ns in ((64, 256), (128, 512), (256, 1024), (384, 1536), (512, 2048), (768, 2560), (1024, 3072),
                            (1024, 4096), (2048, 4096))]
    pats += [Pattern("block_sparse", {"density": d, "block_size": 64}) for d in (0.1, 0.2, 0.3, 0.5, 0.7)]
    return pats + [Pattern("dense")]


def _check_qk(q, k, op):
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() != 4 or k.dim() != 4 \
            or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"{op}: q must be [B, Sq, Hq, D] and k [B, Sk, Hkv, D], got "
                         f"{tuple(getattr(q, 'shape', ()))} and {tuple(getattr(k, 'shape', ()))}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{op}: q heads ({q.shape[2]}) must be a multiple of k heads ({k.shape[2]})")


def _vs_tables(cand, b: int, Sk: int, Hq: int):
    """A vertical-slash candidate as float masks over key columns and over diagonal offsets
    ``[Hq, Sk]`` (main diagonal added, out-of-range entries dropped) and its sorted distinct
    columns ``[Hq, NV]`` (padded with Sk)."""
    vertical, slash = cand[1], cand[2]
    v = vertical[b if vertical.shape[0] > 1 else 0].long()
    s = slash[b if slash.shape[0] > 1 else 0].long()
    # column/offset Sk is a spill slot for out-of-range entries; duplicates collapse
    cols = torch.zeros(v.shape[0], Sk + 1, dtype=torch.bool).scatter_(1, v.clamp(0, Sk), True)[:, :Sk]
    offs = torch.zeros(s.shape[0], Sk + 1, dtype=torch.bool).scatter_(1, s.clamp(0, Sk), True)[:, :Sk]
    offs[:, 0] = True  # the main diagonal, as the op
    cols, offs = cols.expand(Hq, -1), offs.expand(Hq, -1)
    width = max(int(cols.sum(1).max()), 1)
    vl = torch.where(cols, torch.arange(Sk), Sk).sort(1).values[:, :width]
    return cols.float(), offs.float(), offs, vl


def evaluate_candidates(q: torch.Tensor, k: torch.Tensor, candidates: Sequence, *, block: int = 128,
                        scale: Optional[float] = None):
    """Recall and cost of each candidate for each (batch, query head).

    Returns ``(recall, cost)``, both ``float64 [len(candidates), B, Hq]``: recall as in
    :func:`attention_recall`; cost the fraction of the dense causal (query, key) pairs the
    candidate computes (block-sparse counts whole blocks, clipped by causality).
    ``q [B, Sq, Hq, D]``, ``k [B, Sk, Hkv, D]`` (GQA: query head h reads KV head
    h // (Hq // Hkv)); causal, bottom-right aligned. Rows that see no key count as recall 1.

    Per query block the dense probabilities ``p [Hq, rows, Sk]`` are computed once; then a
    streaming candidate reads prefix sums of p, a block-sparse one per-block sums, and a
    vertical-slash one gathers its columns and diagonals (no [rows, Sk] mask per candidate).
    """
    _check_qk(q, k, "attention_recall")
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    for cand in candidates:
        if not isinstance(cand, tuple) or not cand or cand[0] not in KINDS:
            raise ValueError(f"attention_recall: unknown candidate {cand[0] if isinstance(cand, tuple) and cand else cand!r}"
                             f" (dense, streaming, vertical_slash, block_sparse)")
    scale = D ** -0.5 if scale is None else float(scale)
    g = Hq // Hkv
    recall = torch.zeros(len(candidates), B, Hq, dtype=torch.float64)
    pairs = torch.zeros(len(candidates), B, Hq, dtype=torch.float64)
    j = torch.arange(Sk)
    blocks = {}  # block-sparse candidates: bool block maps [B|1, H|1, MB, NB]
    for c, cand in enumerate(candidates):
        if cand[0] == "block_sparse":
            blocks[c] = cand[1].to_dense(-(-Sk // cand[1].block_size[1]))
    for b in range(B):
        kb = k[b].float().permute(1, 2, 0)  # [Hkv, D, Sk]
        vs = {c: _vs_tables(cand, b, Sk, Hq) for c, cand in enumerate(candidates) if cand[0] == "vertical_slash"}
        offcum = {c: t[2].cumsum(1) for c, t in vs.items()}  # offsets <= t, per head
        for r0 in range(0, Sq, block):
            r1 = min(r0 + block, Sq)
            R = r1 - r0
            qi = torch.arange(r0, r1)
            pos = qi + (Sk - Sq)  # key positions of these query rows
            qb = q[b, r0:r1].float().permute(1, 0, 2).reshape(Hkv, g * R, D)
            s = torch.bmm(qb, kb).view(Hq, R, Sk) * scale  # [Hq, rows, Sk]
            causal = j[None, :] <= pos[:, None]
            s = s.masked_fill(~causal[None], float("-inf"))
            p = torch.softmax(s, dim=-1).nan_to_num_(0.0)  # rows seeing nothing: all zeros
            seen = pos >= 0  # [rows]
            last = pos.clamp(max=Sk - 1)  # last key a row sees (-1: none)
            csum, skew, block_sums = None, None, {}
            for c, cand in enumerate(candidates):
                kind = cand[0]
                if kind == "dense":
                    kept = torch.ones(Hq, R, dtype=torch.float64)
                    n = (last + 1).clamp(min=0).sum().double().expand(Hq)
                elif kind == "streaming":
                    if csum is None:  # prefix sums with a leading 0: csum[..., i] = sum of p[..., :i]
                        csum = torch.nn.functional.pad(p.double().cumsum(-1), (1, 0))
                    sink, window = int(cand[1]), int(cand[2])
                    w0 = (pos - window + 1).clamp(min=0)  # window keys [w0, last]
                    e = (last + 1).clamp(min=0)
                    w0 = torch.minimum(w0, e)
                    s_end = torch.minimum(torch.full_like(w0, sink), w0)  # sink keys below the window
                    idx = torch.stack([e, w0, s_end])[None].expand(Hq, -1, -1)  # [Hq, 3, R]
                    cs = csum.gather(-1, idx.permute(0, 2, 1)).permute(0, 2, 1)
                    kept = cs[:, 0] - cs[:, 1] + cs[:, 2]
                    n = ((e - w0) + s_end).sum().double().expand(Hq)
                elif kind == "vertical_slash":
                    if skew is None:  # skew[h, r, o] = p[h, r, pos_r - o]: diagonals become columns
                        d = pos[:, None] - j[None, :]
                        skew = p.gather(-1, d.clamp(0, Sk - 1).expand(Hq, -1, -1)) * (d >= 0)
                    colf, offf, offb, vl = vs[c]
                    kv = torch.bmm(p, colf[:, :, None])[..., 0]  # verticals (p is 0 past causality)
                    ks = torch.bmm(skew, offf[:, :, None])[..., 0]  # diagonals
                    # a vertical column on a kept diagonal is counted once
                    dv = pos[None, :, None] - vl[:, None, :]  # [Hq, R, NV]
                    on = (dv >= 0) & (vl < Sk)[:, None, :]
                    on &= offb.gather(1, dv.clamp(0, Sk - 1).flatten(1)).view_as(dv)
                    kd = (p.gather(-1, vl.clamp(max=Sk - 1)[:, None, :].expand(-1, R, -1)) * on).sum(-1)
                    kept = (kv + ks - kd).double()
                    nv = (vl[:, None, :] <= last[None, :, None]).sum(-1)  # visible verticals
                    ns = offcum[c].gather(1, pos.clamp(0, Sk - 1)[None].expand(Hq, -1)) * (pos >= 0)  # offsets <= pos
                    n = (nv + ns - on.sum(-1)).sum(-1).double()
                else:
                    bq, bk = cand[1].block_size
                    blk = blocks[c][b if blocks[c].shape[0] > 1 else 0][:, qi // bq]  # [H|1, R, NB]
                    nb = blk.shape[-1]
                    if bk not in block_sums:  # per key block sums of p, shared by equal block sizes
                        block_sums[bk] = torch.nn.functional.pad(p, (0, nb * bk - Sk)).view(Hq, R, nb, bk).sum(-1)
                    pb = block_sums[bk]
                    kept = (pb * blk).sum(-1).double()
                    # causal keys of each row in each key block
                    cnt = (last[:, None] + 1 - torch.arange(nb)[None, :] * bk).clamp(0, bk)
                    cnt = torch.minimum(cnt, (Sk - torch.arange(nb) * bk).clamp(max=bk)[None, :])
                    n = (blk * cnt[None]).sum((-1, -2)).double().expand(Hq)
                kept = torch.where(seen[None], kept, torch.ones_like(kept))
                recall[c, b] += kept.sum(-1)
                pairs[c, b] += n
    causal_pairs = max(int((torch.arange(Sq) + Sk - Sq + 1).clamp(min=0, max=Sk).sum()), 1)
    return recall / Sq, pairs / causal_pairs


def computed_fraction(cand, seqlen_q: int, seqlen_k: int, heads: int, block: int = 64) -> torch.Tensor:
    """Share of the dense causal work a candidate's kernel computes, ``float64 [B|1, heads]``:
    what the search calls cost ("the FLOPs it computes"). Counted in the kernels' units: a
    key block of a query block is ``block x block`` products however few of its pairs the
    element mask keeps, a gathered column ``block``; dense causal is the causal key blocks of
    every query block (1.0). Streaming: per query block, its sink keys plus the key range from
    the first row's window start to the last row.
    """
    bq = block
    mb = -(-seqlen_q // bq)
    m = torch.arange(mb)
    first = m * bq + (seqlen_k - seqlen_q)  # key position of each block's first and last row
    last = torch.clamp(m * bq + bq - 1, max=seqlen_q - 1) + (seqlen_k - seqlen_q)
    rows = torch.clamp(torch.full_like(m, seqlen_q) - m * bq, max=bq)
    dense_blocks = ((last.clamp(min=-1) + 1 + bq - 1) // bq).clamp(max=-(-seqlen_k // bq))
    dense = float((dense_blocks * bq * bq).sum())
    kind = cand[0]
    if kind == "dense":
        return torch.ones(1, heads, dtype=torch.float64)
    if kind == "streaming":
        sink, window = int(cand[1]), int(cand[2])
        start = (first - window + 1).clamp(min=0)
        keys = (last - start + 1).clamp(min=0) + torch.minimum(torch.full_like(start, sink), start)
        return torch.full((1, heads), float((keys * rows).sum()) / dense, dtype=torch.float64)
    if kind == "block_sparse":
        mask = cand[1]
        mbq, mbk = mask.block_size
        blocks = mask.to_dense(-(-seqlen_k // mbk)).sum((-1, -2)).double()  # [B|1, H|1]
        return (blocks * mbq * mbk / dense).expand(blocks.shape[0], heads)
    from .vertical_slash import vertical_slash_index

    bc, _, cc, _ = vertical_slash_index(cand[1], cand[2], seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_size=bq)
    work = (bc.double() * bq * bq + cc.double() * rows.double()).sum(-1)  # [B, H|1]
    return (work / dense).expand(work.shape[0], heads)


def attention_recall(q: torch.Tensor, k: torch.Tensor, candidates: Sequence, *, block: int = 128,
                     scale: Optional[float] = None) -> torch.Tensor:
    """Recall of each candidate for each (batch, query head): ``float64 [len(candidates), B, Hq]``.

    ``q [B, Sq, Hq, D]``, ``k [B, Sk, Hkv, D]`` (GQA: query head h reads KV head
    h // (Hq // Hkv)); causal, bottom-right aligned. Rows that see no key count as recall 1.
    """
    return evaluate_candidates(q, k, candidates, block=block, scale=scale)[0]


def search_layer(q: torch.Tensor, k: torch.Tensor, *, target_recall: float = 0.95,
                 patterns: Optional[Sequence[Pattern]] = None, block: int = 128,
                 scale: Optional[float] = None, keep_table: bool = False,
                 time_model: Optional[dict] = None) -> List[dict]:
    """Chooses a pattern per query head of one layer: the cheapest of ``patterns`` (default
    :func:`default_patterns`) whose recall, averaged over the batch, reaches ``target_recall``;
    dense if none does. Returns one dict per query head: ``{"pattern", "params", "recall",
    "cost"}`` (recall and cost rounded to 4 digits), with ``keep_table`` also ``"table"``: the
    ``[recall, cost]`` of every pattern (in order), so that another target can be picked later
    without searching again (:meth:`PatternConfig.with_target`). With ``time_model``
    (:func:`measure_time_model`) "cheapest" means the least modeled time, not cost."""
    _check_qk(q, k, "search_layer")
    if not 0 < target_recall <= 1:
        raise ValueError(f"search_layer: target_recall must be in (0, 1], got {target_recall}")
    pats = list(default_patterns() if patterns is None else patterns)
    if not all(isinstance(p, Pattern) for p in pats):
        raise ValueError("search_layer: patterns must be sparse_attn.search.Pattern objects")
    if Pattern("dense") not in pats:
        pats.append(Pattern("dense"))
    cands = [p.candidate(q, k) for p in pats]
    recall, _ = evaluate_candidates(q, k, cands, block=block, scale=scale)
    cost = torch.stack([computed_fraction(c, q.shape[1], k.shape[1], q.shape[2]).mean(0) for c in cands])
    recall = recall.mean(1)  # [C, Hq]
    picks = []
    for h in range(q.shape[2]):
        table = [[round(float(recall[c, h]), 5), round(float(cost[c, h]), 5)] for c in range(len(pats))]
        pick = pick_pattern(pats, table, target_recall, time_model)
        if keep_table:
            pick["table"] = table
        picks.append(pick)
    return picks


def modeled_time(pattern: Pattern, cost: float, time_model: Optional[dict]) -> float:
    """A pattern's run time relative to dense under ``time_model`` (:func:`measure_time_model`):
    ``fixed + slope * cost`` of its kind; with no model, the cost itself. Dense is 1."""
    if pattern.kind == "dense":
        return 1.0
    if not time_model:
        return float(cost)
    fit = time_model.get("kinds", {}).get(pattern.kind)
    if fit is None:
        raise ValueError(f"time_model: no fit for pattern kind {pattern.kind!r}")
    return float(fit["fixed"]) + float(fit["slope"]) * float(cost)


def pick_pattern(patterns: Sequence[Pattern], table: Sequence[Sequence[float]], target_recall: float,
                 time_model: Optional[dict] = None) -> dict:
    """The cheapest pattern whose recall reaches the target, else dense: ``table[c] =
    [recall, cost]`` of ``patterns[c]``. Cheapest by :func:`modeled_time` when a
    ``time_model`` is given (what the kernels take here), else by cost. Ties go to the
    earlier pattern."""
    ok = [c for c in range(len(patterns)) if table[c][0] >= target_recall]
    key = [modeled_time(patterns[c], table[c][1], time_model) for c in range(len(patterns))]
    best = min(ok, key=lambda c: (key[c], c)) if ok else patterns.index(Pattern("dense"))
    pick = {**patterns[best].to_json(), "recall": round(table[best][0], 4), "cost": round(table[best][1], 4)}
    if time_model:
        pick["time"] = round(key[best], 4)
    return pick


def measure_time_model(q, k, patterns: Optional[Sequence[Pattern]] = None, *, repeats: int = 3,
                       scale: Optional[float] = None) -> dict:
    """Measures what each candidate costs in time on this machine and fits, per pattern kind,
    ``time / dense time = fixed + slope * cost`` (cost: :func:`computed_fraction`).

    The fixed part is what a kind pays whatever its sparsity (packing K/V, run-time
    estimation, partial tiles); without it the search would pick, say, a vertical-slash
    pattern of cost 0.8 that takes longer than dense. ``q [1, S, Hq, D]`` and ``k [1, S,
    Hkv, D]``, or lists of such pairs (e.g. several layers: their points are pooled); real
    queries and keys matter (random ones make every vertical-slash pattern touch every
    block). Each candidate is timed on the first KV group, estimation included, as
    :mod:`sparse_attn.hf` runs it, with random values (time does not depend on them); the
    minimum of ``repeats`` runs. Returns a JSON-able dict for :func:`pick_pattern`,
    :func:`search_model` and :meth:`PatternConfig.with_target`.

    Example::

        q = torch.randn(1, 4096, 3, 64, dtype=torch.bfloat16); k = torch.randn(1, 4096, 1, 64, dtype=torch.bfloat16)
        tm = measure_time_model(q, k)        # {"kinds": {"streaming": {"fixed": .., "slope": ..}, ...}, ...}
    """
    import time

    from . import hf

    qs, ks = (list(q), list(k)) if isinstance(q, (list, tuple)) else ([q], [k])
    if not qs or len(qs) != len(ks):
        raise ValueError("measure_time_model: q and k must be tensors or equally long non-empty lists of tensors")
    for qi, ki in zip(qs, ks):
        _check_qk(qi, ki, "measure_time_model")
        if qi.shape[0] != 1:
            raise ValueError(f"measure_time_model: batch must be 1, got {qi.shape[0]}")
    if repeats < 1:
        raise ValueError(f"measure_time_model: repeats must be >= 1, got {repeats}")
    pats = list(default_patterns() if patterns is None else patterns)
    if Pattern("dense") not in pats:
        pats.append(Pattern("dense"))
    points: Dict[str, List[Tuple[float, float]]] = {}
    dense_s = []
    for qi, ki in zip(qs, ks):
        group = qi.shape[2] // ki.shape[2]
        qg, kg = qi[:, :, :group].contiguous(), ki[:, :, :1].contiguous()
        vg, out = torch.randn_like(kg), torch.empty_like(qg)
        sc = float(scale) if scale is not None else qi.shape[-1] ** -0.5

        def seconds(p: Pattern) -> float:
            st = hf.layer_state([p] * group, group, min_sparse_tokens=0)
            hf._prefill_heads(qg, kg, vg, out, st, sc)  # warm-up
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                hf._prefill_heads(qg, kg, vg, out, st, sc)
                best = min(best, time.perf_counter() - t0)
            return best

        dense_s.append(seconds(Pattern("dense")))
        for p in pats:
            if p.kind != "dense":
                cost = float(computed_fraction(p.candidate(qg, kg), qg.shape[1], kg.shape[1], group).mean())
                points.setdefault(p.kind, []).append((cost, seconds(p) / dense_s[-1]))
    kinds = {}
    for kind, pts in points.items():
        x = torch.tensor([c for c, _ in pts], dtype=torch.float64)
        y = torch.tensor([t for _, t in pts], dtype=torch.float64)
        if float(x.max() - x.min()) < 1e-3:  # no spread in cost: all of it is slope
            fixed, slope = 0.0, float(y.mean() / x.mean().clamp_min(1e-6))
        else:
            slope = max(float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()), 0.0)
            fixed = max(float(y.mean() - slope * x.mean()), 0.0)
        kinds[kind] = {"fixed": round(fixed, 4), "slope": round(slope, 4),
                       "points": [[round(c, 4), round(t, 4)] for c, t in pts]}
    return {"kinds": kinds, "dense_seconds": [round(t, 6) for t in dense_s], "seqlen": int(qs[0].shape[1]),
            "group": int(qs[0].shape[2] // ks[0].shape[2]), "head_dim": int(qs[0].shape[3]),
            "dtype": str(qs[0].dtype).replace("torch.", ""), "threads": torch.get_num_threads()}


def search_model(model, input_ids: torch.Tensor, *, target_recall: float = 0.95,
                 patterns: Optional[Sequence[Pattern]] = None, model_id: str = "", calibration: str = "",
                 progress: bool = True, block: int = 128, keep_table: bool = True,
                 time_model: Optional[dict] = None):
    """Runs :func:`search_layer` on every layer of a Hugging Face model for one calibration
    input and returns a :class:`~sparse_attn.pattern_config.PatternConfig`.

    The model runs once, dense; each layer's queries and keys (after RoPE) are searched while
    the forward pass is at that layer and then dropped, so memory stays at one layer's q/k
    plus one block of scores. ``input_ids [1, S]``. A progress bar over layers (tqdm) when
    ``progress``.

    Example::

        cfg = search_model(model, tok(text, return_tensors="pt").input_ids[:, :8192],
                           model_id="HuggingFaceTB/SmolLM2-135M-Instruct", calibration="pydoc topics")
        cfg.save("patterns/smollm2-135m-instruct.json")
    """
    import time

    from .hf import capture_qk
    from .pattern_config import PatternConfig

    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"search_model: input_ids must be [1, seqlen], got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    mc = model.config
    Hq = mc.num_attention_heads
    Hkv = getattr(mc, "num_key_value_heads", None) or Hq
    D = getattr(mc, "head_dim", None) or mc.hidden_size // Hq
    layers: List[Optional[List[dict]]] = [None] * mc.num_hidden_layers
    bar = progress_bar(mc.num_hidden_layers, progress)
    pats = list(default_patterns() if patterns is None else patterns)
    t0 = time.time()

    def on_layer(layer_idx, q, k, scale):
        picks = search_layer(q, k, target_recall=target_recall, patterns=pats, block=block, scale=scale,
                             keep_table=keep_table, time_model=time_model)
        layers[layer_idx] = [{"head": h, **p} for h, p in enumerate(picks)]
        bar.update(1)

    with torch.no_grad():
        capture_qk(model, input_ids, on_layer)
    bar.close()
    if any(l is None for l in layers):
        raise RuntimeError("search_model: some layers were never reached by the forward pass")
    return PatternConfig({"id": model_id, "num_layers": mc.num_hidden_layers, "num_heads": Hq,
                          "num_kv_heads": Hkv, "head_dim": D}, layers,
                         calibration={"text": calibration, "tokens": int(input_ids.shape[1])},
                         search={"target_recall": target_recall, "candidates": [p.to_json() for p in pats],
                                 "cost": "share of the dense causal work the kernel computes (computed_fraction)",
                                 "seconds": round(time.time() - t0, 1),
                                 **({"time_model": time_model} if time_model else {})})


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def progress_bar(total: int, enabled: bool, desc: str = "pattern search", unit: str = "layer"):
    """A tqdm bar (or a silent stand-in when disabled or tqdm is missing)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit)
