"""Hugging Face integration: run a transformers model's attention through sparse-attn.

:func:`patch` registers the attention function ``"sparse_attn"`` with transformers'
``AttentionInterface`` and switches the model to it. Then, per layer and query head, prefill
runs the head's pattern from a :class:`~sparse_attn.pattern_config.PatternConfig` (streaming,
vertical-slash or block-sparse with their run-time estimators, or dense), and decode reads a
paged KV cache (:class:`SparseAttnCache`, one :class:`~sparse_attn.PagedKVCache` per layer)
with Quest page selection (``decode="quest"``) or densely with stream-K (``decode="dense"``).
q/k/v are used in the layout the model produced them (views, no ``repeat_kv``, no copies);
heads that share a pattern run in one op call.

Supported: Llama-family decoder models whose attention modules call the registered
attention function with (query, key, value) of shape ``[B, H, S, D]`` after RoPE (Llama,
Mistral, Qwen2, SmolLM2, ...). Padding (left or right, one contiguous run of real tokens
per sequence), chunked prefill and short prompts (dense below ``min_sparse_tokens``) work.

Example::

    import torch, sparse_attn.hf as sh
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    sh.patch(model, "smollm2-135m-instruct", decode="quest", token_budget=2048)
    with torch.no_grad():
        out = model.generate(input_ids, max_new_tokens=32)   # sparse prefill, Quest decode
    sh.unpatch(model)
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch

from .attention import block_sparse_attention, streaming_attention
from .masks import estimate_block_sparse
from .paged import PagedKVCache, paged_decode_attention, plan_decode, quest_scores, select_pages
from .pattern_config import PatternConfig
from .search import Pattern
from .vertical_slash import vertical_slash_attention
from .vertical_slash_estimator import estimate_vertical_slash

__all__ = ["patch", "unpatch", "is_patched", "SparseAttnCache", "ATTN_NAME", "SUPPORTED_MODEL_TYPES"]

ATTN_NAME = "sparse_attn"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")  # SmolLM2 is a "llama"
_DECODE_MODES = ("quest", "dense")
_handoff = threading.local()  # the cache layer whose update() the next attention call belongs to


def _transformers():
    try:
        import transformers
        from transformers import AttentionInterface
        from transformers.cache_utils import Cache, CacheLayerMixin
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401 (checked here)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("sparse_attn.hf needs transformers >= 5 (AttentionInterface, cache_utils.Cache with "
                          f"layers): {e}") from None
    return transformers, AttentionInterface, Cache, CacheLayerMixin


def _padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                  **kwargs):
    """The mask function registered with transformers for ATTN_NAME: the attention function
    applies causality and the head patterns itself and only needs the 2D padding mask
    ``[B, kv_length]`` (None without padding), never a [B, 1, Sq, Sk] tensor."""
    from transformers.masking_utils import causal_mask_function
    if mask_function is not None and mask_function is not causal_mask_function:
        raise ValueError("sparse_attn attention: only causal attention with padding is supported (packed sequences "
                         "or custom mask functions are not)")
    if attention_mask is None:
        return None
    m = attention_mask[:, kv_offset:kv_offset + kv_length].bool() if attention_mask.dim() == 2 else attention_mask
    return None if m.dim() == 2 and bool(m.all()) else m


# ---------------------------------------------------------------------------- per-layer plan
@dataclass
class _Run:
    """Query heads [h0, h1) that share a pattern and read KV heads [g0, g1)."""
    h0: int
    h1: int
    g0: int
    g1: int
    pattern: Pattern


def _runs(patterns: List[Pattern], group: int) -> List[_Run]:
    """Maximal runs of equal patterns whose heads map to a contiguous KV-head slice: inside one
    KV group, or whole groups."""
    runs, h, H = [], 0, len(patterns)
    while h < H:
        e = h + 1
        while e < H and patterns[e] == patterns[h] and (e % group != 0 or h % group == 0):
            e += 1
        if h % group == 0 and e % group != 0 and e - h > group:  # cut back to whole groups
            e -= e % group
        g0, g1 = h // group, (e - 1) // group + 1
        runs.append(_Run(h, e, g0, g1, patterns[h]))
        h = e
    return runs


@dataclass
class _LayerState:
    runs: List[_Run]
    dense_kv_heads: List[int]  # KV heads with a dense query head: decode reads all their pages
    decode: str
    token_budget: int
    min_sparse_tokens: int
    group: int


def layer_state(patterns: List[Pattern], group: int, *, decode: str = "quest", token_budget: int = 2048,
                min_sparse_tokens: int = 1024) -> _LayerState:
    """What :func:`patch` attaches to one attention module: its head runs and decode policy."""
    dense_kv = sorted({h // group for h, p in enumerate(patterns) if p.kind == "dense"})
    return _LayerState(_runs(patterns, group), dense_kv, decode, token_budget, min_sparse_tokens, group)


# ---------------------------------------------------------------------------- the cache
class SparseAttnCache:
    """Factory for the transformers ``Cache`` backed by one :class:`PagedKVCache` per layer.

    ``SparseAttnCache(model, max_tokens=None, page_size=16)`` returns an instance of a
    ``transformers.cache_utils.Cache`` subclass; pass it as the model's cache argument,
    ``model(ids, **{cache_kwarg(model): cache})`` (``cache`` from transformers 5.24 on,
    ``past_key_values`` before; a patched model's ``generate`` does so by itself). Pools
    grow as needed; ``max_tokens`` (per
    sequence) only sizes the first allocation. Only a model patched with :func:`patch`
    can use it (the attention function writes the pages, knowing the padding).
    """

    def __new__(cls, model, *, max_tokens: Optional[int] = None, page_size: int = 16):
        _, _, Cache, _ = _transformers()
        if not is_patched(model):
            raise ValueError("SparseAttnCache: the model is not patched; call sparse_attn.hf.patch(model, config) first")
        n = model.config.num_hidden_layers
        layers = [_layer_class()(page_size=page_size, max_tokens=max_tokens) for _ in range(n)]
        return _cache_class()(layers=layers)


@functools.lru_cache(maxsize=None)
def _cache_class():
    _, _, Cache, _ = _transformers()

    class PagedCache(Cache):
        """transformers Cache over :class:`PagedKVCache` layers (see :class:`SparseAttnCache`)."""

        def reorder_cache(self, beam_idx):
            raise NotImplementedError("SparseAttnCache: beam search (reorder_cache) is not supported")

        def crop(self, tokens_to_remove: int):
            raise NotImplementedError("SparseAttnCache: crop (assisted decoding) is not supported")

        def batch_repeat_interleave(self, repeats: int):
            raise NotImplementedError("SparseAttnCache: batch_repeat_interleave is not supported")

        def batch_select_indices(self, indices):
            raise NotImplementedError("SparseAttnCache: batch_select_indices is not supported")

    return PagedCache


@functools.lru_cache(maxsize=None)
def _layer_class():
    _, _, _, CacheLayerMixin = _transformers()

    class PagedLayer(CacheLayerMixin):
        """One layer: a :class:`PagedKVCache` (ragged per sequence: padding is never stored)
        and the number of positions seen (padding included, as transformers counts them)."""
        is_sliding = False

        def __init__(self, page_size: int = 16, max_tokens: Optional[int] = None):
            super().__init__()
            self.page_size, self.max_tokens = page_size, max_tokens
            self.paged: Optional[PagedKVCache] = None
            self.seen = 0
            self.pending = None  # (key, value) of the current update, written by the attention call

        def lazy_initialization(self, key_states, value_states):
            B, Hkv, S, D = key_states.shape
            want = max(self.max_tokens or 0, S + 256)
            pages = -(-want // self.page_size)
            self.paged = PagedKVCache(B * pages, self.page_size, Hkv, D, batch_size=B, max_pages_per_seq=pages,
                                      dtype=key_states.dtype, device=key_states.device)
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.pending = (key_states, value_states)
            _handoff.layer = self
            return key_states, value_states

        def commit(self, k, v, valid: Optional[List[Tuple[int, int]]]):
            """Writes the pending chunk ``k, v [B, S, Hkv, D]``; ``valid[b] = (r0, r1)`` its real
            rows (all rows when None). Grows the pool when needed."""
            B, S = k.shape[0], k.shape[1]
            spans = valid or [(0, S)] * B
            need = [int(self.paged.seqlens[b]) + (r1 - r0) for b, (r0, r1) in enumerate(spans)]
            if not self.paged.can_hold(need):  # grow x2 (at least to fit): same page ids, copied pool
                per_seq = max(-(-max(need) // self.page_size), 2 * self.paged.page_table.shape[1])
                self.paged = self.paged.grown(B * per_seq, per_seq)
            if S == 1 and all(r1 - r0 == 1 for r0, r1 in spans):
                self.paged.append(k[:, 0], v[:, 0])
            else:
                self.paged.extend(k, v, spans)
            self.seen += S
            self.pending = None

        def get_mask_sizes(self, query_length: int):
            return self.seen + query_length, 0

        def get_seq_length(self) -> int:
            return self.seen

        def get_max_length(self) -> int:
            return -1

        def reset(self):
            self.paged, self.seen, self.pending, self.is_initialized = None, 0, None, False

        def reorder_cache(self, beam_idx):
            raise NotImplementedError("SparseAttnCache: beam search (reorder_cache) is not supported")

    return PagedLayer


# ---------------------------------------------------------------------------- attention
def _valid_spans(attention_mask, B: int, kv_len: int, q_len: int):
    """Per sequence the (first, end) kv positions of its real tokens, or None without padding.
    Raises unless each sequence's real tokens are one contiguous run."""
    if attention_mask is None:
        return None
    m = attention_mask
    if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[0] != B:
        raise ValueError(f"sparse_attn attention: expected a 2D padding mask [batch, kv_len] or None, got "
                         f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__} (custom 4D masks "
                         f"are not supported)")
    m = m[:, -kv_len:].bool() if m.shape[1] >= kv_len else m.bool()
    if bool(m.all()):
        return None
    spans = []
    for b in range(B):
        idx = m[b].nonzero().flatten()
        if idx.numel() == 0:
            spans.append((kv_len, kv_len))
            continue
        s0, s1 = int(idx[0]), int(idx[-1]) + 1
        if s1 - s0 != idx.numel():
            raise ValueError(f"sparse_attn attention: sequence {b} has padding between real tokens; only one "
                             f"contiguous run of real tokens per sequence is supported")
        spans.append((s0, s1))
    return spans


def _prefill_heads(q, k, v, out, st: _LayerState, scale: float):
    """Runs every head of one layer on its pattern. q/out ``[B, Sq, Hq, D]``, k/v
    ``[B, Sk, Hkv, D]`` (views)."""
    Sk = k.shape[1]
    if Sk < st.min_sparse_tokens:
        runs = [_Run(0, q.shape[2], 0, k.shape[2], Pattern("dense"))]
    else:
        runs = st.runs
    for r in runs:
        qr, kr, vr, outr = q[:, :, r.h0:r.h1], k[:, :, r.g0:r.g1], v[:, :, r.g0:r.g1], out[:, :, r.h0:r.h1]
        p, kind = r.pattern.params, r.pattern.kind
        if kind == "dense":
            streaming_attention(qr, kr, vr, sink_tokens=0, window_tokens=Sk, scale=scale, out=outr)
        elif kind == "streaming":
            streaming_attention(qr, kr, vr, sink_tokens=int(p["sink_tokens"]), window_tokens=int(p["window_tokens"]),
                                scale=scale, out=outr)
        elif kind == "vertical_slash":
            vert, slash = estimate_vertical_slash(qr, kr, n_vertical=int(p["n_vertical"]), n_slash=int(p["n_slash"]),
                                                  last_q=int(p.get("last_q", 64)), scale=scale)
            vertical_slash_attention(qr, kr, vr, vert, slash, scale=scale, out=outr)
        else:
            mask = estimate_block_sparse(qr, kr, block_size=int(p["block_size"]), density=float(p["density"]))
            block_sparse_attention(qr, kr, vr, mask, scale=scale, out=outr)


def _gather(paged: PagedKVCache, b: int):
    """Sequence b's keys and values as ``[1, n, Hkv, D]`` (a copy out of the pages)."""
    n = int(paged.seqlens[b])
    ids = paged.page_table[b, :-(-n // paged.page_size)].long()
    k = paged.k_pages[ids].reshape(-1, *paged.k_pages.shape[2:])[:n]
    v = paged.v_pages[ids].reshape(-1, *paged.v_pages.shape[2:])[:n]
    return k[None], v[None]


def _decode(q3, layer, st: _LayerState, scale: float, cache_obj):
    """One decode step over the paged cache: q3 ``[B, Hq, D]``."""
    paged = layer.paged
    if st.decode == "quest":
        scores = quest_scores(q3, paged)
        pages, counts = select_pages(scores, paged, token_budget=st.token_budget)
        if st.dense_kv_heads:
            pages, counts = _with_dense_heads(pages, counts, paged, st.dense_kv_heads)
        return paged_decode_attention(q3, paged, pages=pages, counts=counts, scale=scale)
    # dense, stream-K: one plan serves every layer (same lengths) until a tile count changes
    key = (tuple(paged.seqlens.tolist()), q3.shape[1], paged.page_size)
    plan = getattr(cache_obj, "_sa_plan", None)
    if plan is None or cache_obj._sa_plan_key != key:
        plan = plan_decode(paged, heads_q=q3.shape[1])
        cache_obj._sa_plan, cache_obj._sa_plan_key = plan, key
    return paged_decode_attention(q3, paged, scale=scale, plan=plan)


def _with_dense_heads(pages, counts, paged: PagedKVCache, heads: List[int]):
    """Widens a Quest selection so that the listed KV heads read every page."""
    npages = (paged.seqlens.to(torch.int64) + paged.page_size - 1) // paged.page_size
    width = max(pages.shape[2], int(npages.max()) if npages.numel() else 0)
    if width > pages.shape[2]:
        wide = torch.zeros(pages.shape[0], pages.shape[1], width, dtype=pages.dtype, device=pages.device)
        wide[..., :pages.shape[2]] = pages
        pages = wide
    else:
        pages = pages.clone()
    counts = counts.clone()
    ar = torch.arange(width, dtype=pages.dtype, device=pages.device)
    for g in heads:
        pages[:, g] = ar
        counts[:, g] = npages.to(counts.dtype)
    return pages, counts


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: query ``[B, Hq, Sq, D]``, key/value ``[B, Hkv, Sk, D]``
    (after RoPE) -> ``([B, Sq, Hq, D], None)``."""
    st: Optional[_LayerState] = getattr(module, "_sparse_attn", None)
    if st is None:
        raise RuntimeError("sparse_attn attention: this attention module was not patched by sparse_attn.hf.patch")
    if dropout:
        raise ValueError("sparse_attn attention: dropout is not supported (inference only)")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    B, Hq, Sq, D = query.shape
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, S, H, D] views
    layer = getattr(_handoff, "layer", None)
    ours = layer is not None and layer.pending is not None and layer.pending[0] is key
    if ours:
        _handoff.layer = None
        kv_len = layer.seen + Sq
        spans = _valid_spans(attention_mask, B, kv_len, Sq)
        past = layer.seen
        rows = None if spans is None else [(max(s0, past) - past, max(s1, past) - past) for s0, s1 in spans]
        layer.commit(k, v, rows)
        if Sq == 1 and past > 0 and (rows is None or all(r1 - r0 == 1 for r0, r1 in rows)):
            out = _decode(q[:, 0], layer, st, scale, layer)
            return out[:, None], None
        if past == 0 and rows is None:  # every head's run writes every row: no zero fill
            out = torch.empty(B, Sq, Hq, D, dtype=query.dtype, device=query.device)
            _prefill_heads(q, k, v, out, st, scale)
            return out, None
        out = torch.zeros(B, Sq, Hq, D, dtype=query.dtype, device=query.device)
        for b in range(B):  # chunked prefill or padding: one sequence at a time, keys from the pages
            r0, r1 = rows[b] if rows is not None else (0, Sq)
            if r1 <= r0:
                continue
            kb, vb = _gather(layer.paged, b)
            _prefill_heads(q[b:b + 1, r0:r1], kb, vb, out[b:b + 1, r0:r1], st, scale)
        return out, None
    # Not our cache (DynamicCache or none): key/value hold the whole (padded) sequence.
    Sk = k.shape[1]
    spans = _valid_spans(attention_mask, B, Sk, Sq)
    if spans is None:
        if Sq == 1:
            return _dense_decode(query, key, value, None, scale), None
        out = torch.empty(B, Sq, Hq, D, dtype=query.dtype, device=query.device)
        _prefill_heads(q, k, v, out, st, scale)
        return out, None
    if Sq == 1:  # decode is dense over each sequence's real keys (as with our cache), never a prefill pattern
        keep = torch.zeros(B, 1, 1, Sk, dtype=torch.bool, device=query.device)
        for b, (s0, s1) in enumerate(spans):
            keep[b, ..., s0:s1] = True
        return _dense_decode(query, key, value, keep, scale), None
    out = torch.zeros(B, Sq, Hq, D, dtype=query.dtype, device=query.device)
    P0 = Sk - Sq  # kv position of query row 0
    for b, (s0, s1) in enumerate(spans):
        r0, r1 = max(s0 - P0, 0), max(min(s1 - P0, Sq), 0)
        if r1 <= r0:
            continue
        _prefill_heads(q[b:b + 1, r0:r1], k[b:b + 1, s0:P0 + r1], v[b:b + 1, s0:P0 + r1], out[b:b + 1, r0:r1],
                       st, scale)
    return out, None


def _dense_decode(query, key, value, mask, scale):
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale,
                                                           enable_gqa=True)
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------- patch / unpatch
def _attention_modules(model):
    layers = [m for m in model.modules() if hasattr(m, "layer_idx") and type(m).__name__.endswith("Attention")]
    return sorted(layers, key=lambda m: m.layer_idx)


def is_patched(model) -> bool:
    return getattr(model, "_sparse_attn_patched", None) is not None


def patch(model, config: Union[PatternConfig, str], *, decode: str = "quest", token_budget: int = 2048,
          min_sparse_tokens: int = 1024, page_size: int = 16, _mode: Optional[str] = None):
    """Switches ``model``'s attention to sparse-attn (in place; returns the model).

    Args:
        config: a :class:`PatternConfig`, a JSON path, or a shipped config's name; it must fit
            the model's layer and head counts.
        decode: ``"quest"`` (Quest page selection at ``token_budget`` tokens per KV head; KV
            heads with a dense query head read every page) or ``"dense"`` (every page,
            stream-K split over the threads).
        min_sparse_tokens: prompts shorter than this run dense.
        page_size: page size of the paged KV cache that ``generate`` uses.

    With transformers >= 5 the attention runs through ``AttentionInterface`` and decode through
    :class:`SparseAttnCache`. Where ``AttentionInterface`` is missing (transformers < 4.48),
    the attention modules' ``forward`` is replaced instead: prefill is sparse per the config
    as above, decode is dense (SDPA) over the model's own cache, since the paged cache needs
    transformers >= 5's cache layers (``decode`` and ``token_budget`` then have no effect).

    Example::

        from sparse_attn import hf
        hf.patch(model, "smollm2-135m-instruct")    # a SmolLM2-135M model from transformers
        out = model.generate(ids, max_new_tokens=32)
        hf.unpatch(model)
    """
    mode = _mode if _mode is not None else ("interface" if _has_attention_interface() else "forward")
    if mode not in ("interface", "forward"):
        raise ValueError(f"patch: _mode must be 'interface' or 'forward', got {_mode!r}")
    if decode not in _DECODE_MODES:
        raise ValueError(f"patch: decode must be one of {_DECODE_MODES}, got {decode!r}")
    for name, val in (("token_budget", token_budget), ("min_sparse_tokens", min_sparse_tokens),
                      ("page_size", page_size)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"patch: {name} must be an int >= 1, got {val!r}")
    if is_patched(model):
        raise ValueError("patch: the model is already patched; call unpatch(model) first")
    mc = getattr(model, "config", None)
    missing = [a for a in ("num_hidden_layers", "num_attention_heads", "model_type") if not hasattr(mc, a)]
    if missing:
        raise ValueError(f"patch: unsupported model {type(model).__name__}: its config lacks {missing}")
    if mc.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"patch: unsupported model type {mc.model_type!r} ({type(model).__name__}); supported: "
                         f"{SUPPORTED_MODEL_TYPES} (Llama-family decoders whose attention calls AttentionInterface)")
    if getattr(mc, "sliding_window", None) and getattr(mc, "use_sliding_window", True) \
            and mc.model_type in ("mistral", "qwen2"):
        raise ValueError(f"patch: {mc.model_type} with sliding-window attention (sliding_window={mc.sliding_window}) "
                         f"is not supported: the patterns assume full causal attention; set sliding_window=None")
    Hq = mc.num_attention_heads
    Hkv = getattr(mc, "num_key_value_heads", None) or Hq
    D = getattr(mc, "head_dim", None) or mc.hidden_size // Hq
    modules = _attention_modules(model)
    if len(modules) != mc.num_hidden_layers:
        raise ValueError(f"patch: unsupported model {type(model).__name__}: found {len(modules)} attention modules "
                         f"with a layer_idx, expected {mc.num_hidden_layers}")
    cfg = config if isinstance(config, PatternConfig) else PatternConfig.load(config)
    cfg.validate(num_layers=mc.num_hidden_layers, num_heads=Hq, num_kv_heads=Hkv, head_dim=D)
    for m in modules:
        m._sparse_attn = layer_state(cfg.layer_patterns(m.layer_idx), Hq // Hkv, decode=decode,
                                     token_budget=token_budget, min_sparse_tokens=min_sparse_tokens)
    if mode == "forward":
        _patch_forwards(model, modules)
        model._sparse_attn_patched = {"mode": "forward", "config": cfg}
        return model
    _, AttentionInterface, _, _ = _transformers()
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, _attention)
    AttentionMaskInterface.register(ATTN_NAME, _padding_mask)
    previous = mc._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    original_generate = model.generate

    name = cache_kwarg(model)

    @functools.wraps(original_generate)
    def generate(*args, **kwargs):
        if all(kwargs.get(n) is None for n in _CACHE_NAMES) and kwargs.get("use_cache", True):
            kwargs[name] = SparseAttnCache(model, page_size=page_size)
        return original_generate(*args, **kwargs)

    model.generate = generate
    model._sparse_attn_patched = {"mode": "interface", "previous": previous, "config": cfg}
    return model


# The names of a model's KV-cache argument: cache (transformers 5.24 on), past_key_values
# (5.0-5.23, and the model forward before 5.24), past_key_value (attention forwards of 4.x).
_CACHE_NAMES = ("cache", "past_key_values", "past_key_value")


def cache_kwarg(model) -> str:
    """The keyword under which ``model``'s forward takes its KV cache: ``"cache"`` from
    transformers 5.24 on, ``"past_key_values"`` before (5.24 deprecates it).

    Example::

        out = model(ids, **{sparse_attn.hf.cache_kwarg(model): cache}, use_cache=True)
    """
    import inspect

    try:
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output):
    """The KV cache a model call returned: ``output.cache`` (transformers >= 5.24) or
    ``output.past_key_values``."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def unpatch(model):
    """Undoes :func:`patch` (restores the attention implementation and ``generate``)."""
    state = getattr(model, "_sparse_attn_patched", None)
    if state is None:
        raise ValueError("unpatch: the model is not patched")
    for m in _attention_modules(model):
        if hasattr(m, "_sparse_attn"):
            del m._sparse_attn
    if state["mode"] == "forward":
        for m in _attention_modules(model):
            m.__dict__.pop("forward", None)  # the instance attribute; the class method shows through again
        model.__dict__.pop("forward", None)
    else:
        model.set_attn_implementation(state["previous"])
        del model.generate
    model._sparse_attn_patched = None
    return model


# ---------------------------------------------------------------------------- fallback: forward patching
def _has_attention_interface() -> bool:
    try:
        _transformers()
    except ImportError:
        return False
    return True


_model_call = threading.local()  # the 2D padding mask of the running forward (forward mode)


def _patch_forwards(model, modules):
    """Forward mode: the model's ``forward`` keeps its call's 2D padding mask where the attention
    modules can read it (they only get a 4D mask, or none), and each attention module gets a
    ``forward`` that projects, applies RoPE, updates the model's own cache and then runs
    :func:`_attention` (sparse prefill per the config, dense decode)."""
    import inspect
    import sys

    model_forward = model.forward

    @functools.wraps(model_forward)
    def forward(*args, **kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError(f"sparse_attn.hf: attention_mask must be a 2D padding mask [batch, seqlen], got "
                             f"{mask.dim()}D (custom 4D masks are not supported)")
        saved = getattr(_model_call, "mask", None)
        _model_call.mask = mask
        try:
            return model_forward(*args, **kwargs)
        finally:
            _model_call.mask = saved

    model.forward = forward
    for m in modules:
        names = list(inspect.signature(type(m).forward).parameters)[1:]  # without self
        rope = getattr(sys.modules[type(m).__module__], "apply_rotary_pos_emb", None)
        if rope is None or not all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise ValueError(f"patch: unsupported attention module {type(m).__name__}: needs q/k/v/o_proj and its "
                             f"module's apply_rotary_pos_emb")
        m.forward = functools.partial(_attention_forward, m, names, rope)


def _attention_forward(module, names, rope, *args, **kwargs):
    """A Llama-family attention forward (transformers 4.3x-4.47 and 5.x call conventions)."""
    kw = dict(zip(names, args), **kwargs)
    x = kw["hidden_states"]
    B, S, _ = x.shape
    D = getattr(module, "head_dim", None) or module.config.hidden_size // module.config.num_attention_heads
    q = module.q_proj(x).view(B, S, -1, D).transpose(1, 2)
    k = module.k_proj(x).view(B, S, -1, D).transpose(1, 2)
    v = module.v_proj(x).view(B, S, -1, D).transpose(1, 2)
    pe = kw.get("position_embeddings")
    if pe is None:
        if not hasattr(module, "rotary_emb"):
            raise ValueError(f"sparse_attn.hf: {type(module).__name__} got no position_embeddings and has no rotary_emb")
        pe = module.rotary_emb(v, kw.get("position_ids"))
    cos, sin = pe
    q, k = rope(q, k, cos, sin)
    cache = next((kw[n] for n in _CACHE_NAMES if kw.get(n) is not None), None)
    if cache is not None:
        k, v = cache.update(k, v, module.layer_idx, {"sin": sin, "cos": cos, "cache_position": kw.get("cache_position")})
    mask = getattr(_model_call, "mask", None)
    out, _ = _attention(module, q, k, v, mask, scaling=getattr(module, "scaling", None))
    out = module.o_proj(out.reshape(B, S, -1))
    return (out, None, cache) if "output_attentions" in names else (out, None)



# ---------------------------------------------------------------------------- calibration capture
_CAPTURE_NAME = "sparse_attn_capture"
_capture = threading.local()


def _capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Dense SDPA that first hands (layer, q, k) to the active callback (see capture_qk)."""
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    cb = getattr(_capture, "callback", None)
    if cb is not None:
        cb(module.layer_idx, query.transpose(1, 2), key.transpose(1, 2), scale)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1,
                                                           scale=scale, enable_gqa=True)
    return out.transpose(1, 2), None


def capture_qk(model, input_ids, callback):
    """Runs ``model(input_ids)`` dense and calls ``callback(layer_idx, q, k, scale)`` in every
    layer with its queries ``[B, S, Hq, D]`` and keys ``[B, S, Hkv, D]`` after RoPE (views,
    valid during the call only). Restores the model's attention implementation afterwards."""
    _, AttentionInterface, _, _ = _transformers()
    if is_patched(model):
        raise ValueError("capture_qk: unpatch the model first")
    AttentionInterface.register(_CAPTURE_NAME, _capture_attention)
    previous = model.config._attn_implementation
    model.set_attn_implementation(_CAPTURE_NAME)
    _capture.callback = callback
    try:
        getattr(model, "base_model", model)(input_ids, use_cache=False)  # no LM head: no logits needed
    finally:
        _capture.callback = None
        model.set_attn_implementation(previous)
