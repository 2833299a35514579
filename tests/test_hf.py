"""sparse_attn.hf on tiny random Llama models (float32): patched prefill against a float64
reference attention with the same per-head masks (flash-attention's 2x rule), decode,
padding, chunked prefill and the error paths."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AttentionInterface  # noqa: E402

import sparse_attn.hf as sh  # noqa: E402
from sparse_attn import reference as ref  # noqa: E402
from sparse_attn.masks import estimate_block_sparse  # noqa: E402
from sparse_attn.pattern_config import PatternConfig  # noqa: E402
from sparse_attn.search import Pattern  # noqa: E402
from sparse_attn.vertical_slash_estimator import estimate_vertical_slash  # noqa: E402

from hf_models import DENSE, HKV, HQ, MIXED, PATTERNS, D, L, config, tiny_model  # noqa: E402,F401


def _ref_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """float64 reference with each head's run-time mask (same estimators as the patched path)."""
    pats = module._sa_ref_patterns
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    B, Sq, Hq, _ = q.shape
    Sk = k.shape[1]
    g = Hq // k.shape[2]
    masks = []
    for h, p in enumerate(pats):
        qh, kh = q[:, :, h:h + 1], k[:, :, h // g:h // g + 1]
        if p.kind == "dense":
            m = ref.causal_mask(Sq, Sk).expand(B, 1, Sq, Sk)
        elif p.kind == "streaming":
            m = ref.streaming_dense_mask(Sq, Sk, p.params["sink_tokens"], p.params["window_tokens"]).expand(B, 1, Sq, Sk)
        elif p.kind == "vertical_slash":
            vv, ss = estimate_vertical_slash(qh, kh, n_vertical=p.params["n_vertical"], n_slash=p.params["n_slash"],
                                             scale=scaling)
            m = ref.vertical_slash_dense_mask(vv, ss, Sq, Sk)
        else:
            bm = estimate_block_sparse(qh, kh, block_size=p.params["block_size"], density=p.params["density"])
            m = ref.block_sparse_dense_mask(bm.counts, bm.indices, bm.block_size, Sq, Sk) & ref.causal_mask(Sq, Sk)
        masks.append(m.expand(B, 1, Sq, Sk))
    out = ref.attention(q, k, v, torch.cat(masks, 1), scale=scaling)
    return out.to(query.dtype), None


def ref_logits(model, cfg, ids):
    AttentionInterface.register("sa_test_reference", _ref_attention)
    prev = model.config._attn_implementation
    for m in sh._attention_modules(model):
        m._sa_ref_patterns = cfg.layer_patterns(m.layer_idx)
    model.set_attn_implementation("sa_test_reference")
    try:
        return model(ids, use_cache=False).logits
    finally:
        model.set_attn_implementation(prev)


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


@torch.no_grad()
@pytest.mark.parametrize("B,S", [(1, 300), (2, 257)])
def test_prefill_matches_reference(B, S):
    model = tiny_model()
    ids = torch.randint(1, 128, (B, S), generator=torch.Generator().manual_seed(S))
    base = err(model(ids, use_cache=False).logits, ref_logits(model, DENSE, ids))  # torch SDPA fp32 vs fp64
    want = ref_logits(model, MIXED, ids)
    sh.patch(model, MIXED, min_sparse_tokens=64)
    got = model(ids, use_cache=False).logits
    sh.unpatch(model)
    assert err(got, want) <= 2 * base + 1e-6
    assert err(got, model(ids, use_cache=False).logits) > 1e-3  # the patterns do change the result


@torch.no_grad()
def test_short_prompt_is_dense_and_unpatch_restores():
    model = tiny_model()
    ids = torch.randint(1, 128, (1, 100), generator=torch.Generator().manual_seed(1))
    dense = model(ids, use_cache=False).logits
    sh.patch(model, MIXED, min_sparse_tokens=128)
    assert sh.is_patched(model) and model.config._attn_implementation == sh.ATTN_NAME
    short = model(ids, use_cache=False).logits
    sh.unpatch(model)
    assert not sh.is_patched(model) and model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(short, dense, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model(ids, use_cache=False).logits, dense, rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("decode", ["quest", "dense"])
def test_generate_dense_config_matches_unpatched(decode):
    """All-dense patterns and a budget covering the sequence: the paged cache + Quest or
    stream-K decode must reproduce transformers' own greedy decoding step by step."""
    model = tiny_model()
    ids = torch.randint(1, 128, (2, 200), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    want = model.generate(ids, **kw)
    sh.patch(model, DENSE, decode=decode, token_budget=4096, min_sparse_tokens=64)
    got = model.generate(ids, **kw)
    sh.unpatch(model)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_quest_small_budget_decode_reads_fewer_pages():
    """A Quest budget below the context changes the decode step (it reads a subset of pages),
    and a budget covering the context does not. (Sparse patterns everywhere, so that no KV
    head is forced dense; prefill stays dense below min_sparse_tokens.)"""
    model = tiny_model()
    ids = torch.randint(1, 128, (1, 600), generator=torch.Generator().manual_seed(3))
    nxt = torch.randint(1, 128, (1, 1), generator=torch.Generator().manual_seed(4))
    outs = []
    for budget in (4096, 64):
        sh.patch(model, config(lambda l, h: 0), decode="quest", token_budget=budget, min_sparse_tokens=10000)
        cache = sh.SparseAttnCache(model)
        model(ids, **{sh.cache_kwarg(model): cache})
        outs.append(model(nxt, **{sh.cache_kwarg(model): cache}).logits[:, -1])
        assert cache.layers[0].paged.seqlens.tolist() == [601]
        sh.unpatch(model)
    full = model(torch.cat([ids, nxt], 1), use_cache=False).logits[:, -1]
    torch.testing.assert_close(outs[0], full, rtol=1e-4, atol=1e-4)
    assert err(outs[1], full) > 1e-4


@torch.no_grad()
def test_chunked_prefill_matches_one_shot():
    model = tiny_model()
    ids = torch.randint(1, 128, (1, 320), generator=torch.Generator().manual_seed(5))
    # The run-time estimators of the last layer see the same rows in both (the last 64
    # queries for vertical-slash; query blocks aligned at 192 for block-sparse) and layer 0
    # is chunk-independent (streaming, dense), so the second chunk equals the one-shot rows.
    # (Estimated heads in layer 0 would see other rows in chunk 1 and change layer 1's keys.)
    # The first chunk equals a one-shot prefill of its own tokens.
    cfg = config(lambda l, h: (h % 2) * 3 if l == 0 else (h + l) % 4)
    sh.patch(model, cfg, min_sparse_tokens=64)
    one = model(ids, use_cache=False).logits
    first = model(ids[:, :192], use_cache=False).logits
    cache = sh.SparseAttnCache(model, max_tokens=64)  # too small: the pools must grow
    a = model(ids[:, :192], **{sh.cache_kwarg(model): cache}).logits
    b = model(ids[:, 192:], **{sh.cache_kwarg(model): cache}).logits
    sh.unpatch(model)
    assert cache.get_seq_length() == 320 and cache.layers[1].paged.seqlens.tolist() == [320]
    torch.testing.assert_close(a, first, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b, one[:, 192:], rtol=1e-4, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_single_sequences(side):
    model = tiny_model()
    g = torch.Generator().manual_seed(6)
    seqs = [torch.randint(1, 128, (n,), generator=g) for n in (300, 210)]
    S = 300
    ids = torch.zeros(2, S, dtype=torch.long)
    mask = torch.zeros(2, S, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(S - len(s), S) if side == "left" else slice(0, len(s))
        ids[b, sl], mask[b, sl] = s, 1
    sh.patch(model, MIXED, min_sparse_tokens=64)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    for use_cache in (False, True):
        kw = {sh.cache_kwarg(model): sh.SparseAttnCache(model)} if use_cache else {"use_cache": False}
        batch = model(ids, attention_mask=mask, position_ids=pos, **kw).logits
        for b, s in enumerate(seqs):
            kw1 = {sh.cache_kwarg(model): sh.SparseAttnCache(model)} if use_cache else {"use_cache": False}
            single = model(s[None], **kw1).logits[0]
            sl = slice(S - len(s), S) if side == "left" else slice(0, len(s))
            torch.testing.assert_close(batch[b, sl], single, rtol=1e-4, atol=1e-4)
    if side == "left":  # generate with left padding equals generating each sequence alone
        kw = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
        both = model.generate(ids, attention_mask=mask, **kw)
        for b, s in enumerate(seqs):
            one = model.generate(s[None], **kw)
            assert torch.equal(both.sequences[b, S:], one.sequences[0, len(s):])
    sh.unpatch(model)


def test_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="decode must be"):
        sh.patch(model, MIXED, decode="sparse")
    with pytest.raises(ValueError, match="token_budget"):
        sh.patch(model, MIXED, token_budget=0)
    with pytest.raises(ValueError, match="not patched"):
        sh.SparseAttnCache(model)
    with pytest.raises(ValueError, match="not patched"):
        sh.unpatch(model)
    wrong = PatternConfig({"id": "x", "num_layers": L, "num_heads": 4, "num_kv_heads": HKV, "head_dim": D},
                          [[{"head": h, **PATTERNS[3]} for h in range(4)] for _ in range(L)])
    with pytest.raises(ValueError, match="num_heads"):
        sh.patch(model, wrong)
    sh.patch(model, MIXED)
    with pytest.raises(ValueError, match="already patched"):
        sh.patch(model, MIXED)
    with pytest.raises(NotImplementedError, match="beam search"):
        with torch.no_grad():
            model.generate(torch.randint(1, 128, (1, 20)), num_beams=2, max_new_tokens=2, do_sample=False)
    sh.unpatch(model)
    model.config.model_type = "gpt2"
    with pytest.raises(ValueError, match="unsupported model type 'gpt2'"):
        sh.patch(model, MIXED)


def test_runs_group_heads_by_pattern_and_kv_head():
    P = [Pattern("dense")] * 6
    assert [(r.h0, r.h1, r.g0, r.g1) for r in sh._runs(P, 3)] == [(0, 6, 0, 2)]
    S = Pattern("streaming", {"sink_tokens": 4, "window_tokens": 8})
    P = [S, S, Pattern("dense"), Pattern("dense"), Pattern("dense"), S]
    assert [(r.h0, r.h1, r.g0, r.g1) for r in sh._runs(P, 3)] == [(0, 2, 0, 1), (2, 3, 0, 1), (3, 5, 1, 2),
                                                                   (5, 6, 1, 2)]
    P = [S] * 4 + [Pattern("dense")] * 2
    assert [(r.h0, r.h1, r.g0, r.g1) for r in sh._runs(P, 2)] == [(0, 4, 0, 2), (4, 6, 2, 3)]
    P = [S] * 5 + [Pattern("dense")]
    assert [(r.h0, r.h1, r.g0, r.g1) for r in sh._runs(P, 2)] == [(0, 4, 0, 2), (4, 5, 2, 3), (5, 6, 2, 3)]


@torch.no_grad()
def test_search_model_matches_search_layer_on_captured_qk():
    from sparse_attn.search import search_layer, search_model

    model = tiny_model()
    ids = torch.randint(1, 128, (1, 256), generator=torch.Generator().manual_seed(8))
    pats = [Pattern(p["pattern"], p["params"]) for p in PATTERNS]
    cfg = search_model(model, ids, target_recall=0.9, patterns=pats, model_id="tiny", progress=False)
    cfg.validate(num_layers=L, num_heads=HQ, num_kv_heads=HKV, head_dim=D)
    assert cfg.calibration["tokens"] == 256 and cfg.search["target_recall"] == 0.9
    seen = {}
    sh.capture_qk(model, ids, lambda l, q, k, scale: seen.setdefault(l, search_layer(
        q, k, target_recall=0.9, patterns=pats, scale=scale, keep_table=True)))
    assert sorted(seen) == list(range(L))
    for l in range(L):
        assert [{"head": h, **p} for h, p in enumerate(seen[l])] == cfg.layers[l]
    assert model.config._attn_implementation == "sdpa"  # restored
    sh.patch(model, cfg, min_sparse_tokens=64)  # the result is usable as is
    assert torch.isfinite(model(ids, use_cache=False).logits).all()
    sh.unpatch(model)


class _CharTokenizer:
    """Stand-in tokenizer for the demo on the tiny model: one id per character."""

    def __call__(self, text, return_tensors=None):
        class Out:
            input_ids = torch.tensor([[1 + ord(c) % 127 for c in text[:5000]]])
        return Out()

    def decode(self, ids):
        return "".join(chr(32 + i % 90) for i in ids)


@torch.no_grad()
def test_demo_run_reports_every_figure():
    from sparse_attn import demo

    model = tiny_model()
    res = demo.run(model, _CharTokenizer(), MIXED, tokens=320, new_tokens=3, token_budget=64, progress=False)
    assert not sh.is_patched(model) and model.config._attn_implementation == "sdpa"
    for mode in ("dense", "patched"):
        assert res[mode]["prefill_s"] > 0 and res[mode]["ppl"] > 1 and len(res[mode]["continuation"]) == 3
    assert 0 <= res["top1_agreement_last"]["agreement"] <= 1 and res["top1_agreement_last"]["positions"] == 320
    assert set(res["decode_attention_s"]) == {"sdpa", "patched_dense_stream_k", "patched_quest", "quest_all_heads"}
    assert "prefill speedup" in demo.format_results(res)
    assert res["prefill_logits"] == "last position"


@torch.no_grad()
def test_demo_prefill_logits_from_the_final_norm_equal_the_full_forward():
    from sparse_attn import demo

    model = tiny_model()
    ids = torch.randint(1, 128, (1, 96), generator=torch.Generator().manual_seed(3))
    full = model(ids, use_cache=False).logits[0].float()
    logits, gen, *_ = demo._prefill_and_decode(model, ids, 2, None)
    torch.testing.assert_close(logits, full, rtol=0, atol=0)
    assert gen[0] == int(full[-1].argmax())


@torch.no_grad()
def test_demo_decode_attention_calls_run_each_layers_own_step():
    """The timed decode variants are bound to their own layer's cache and query, and with a
    budget covering the context all four compute the same attention."""
    from sparse_attn import demo

    model = tiny_model()
    ids = torch.randint(1, 128, (1, 300), generator=torch.Generator().manual_seed(6))
    sh.patch(model, DENSE, min_sparse_tokens=64)
    cache = sh.SparseAttnCache(model)
    model(ids, **{sh.cache_kwarg(model): cache}, use_cache=True)
    sh.unpatch(model)
    g = torch.Generator().manual_seed(7)
    queries = {l: torch.randn(1, HQ, D, generator=g) for l in range(L)}
    calls = demo._decode_attention_calls(model, cache, queries, DENSE, token_budget=4096)
    outs = [{name: f().reshape(HQ, D) for name, f in c.items()} for c in calls]
    for l in range(L):
        for name in ("patched_dense_stream_k", "patched_quest", "quest_all_heads"):
            torch.testing.assert_close(outs[l][name], outs[l]["sdpa"], rtol=1e-4, atol=1e-5)
    assert (outs[0]["sdpa"] - outs[1]["sdpa"]).abs().max() > 1e-3


def test_mistral_without_sliding_window_works_and_with_it_is_rejected():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    kw = dict(vocab_size=128, hidden_size=96, intermediate_size=128, num_hidden_layers=L, num_attention_heads=HQ,
              num_key_value_heads=HKV, head_dim=D, max_position_embeddings=4096)
    model = MistralForCausalLM(MistralConfig(sliding_window=None, **kw)).eval()
    ids = torch.randint(1, 128, (1, 200), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits
        sh.patch(model, DENSE, min_sparse_tokens=64)
        torch.testing.assert_close(model(ids, use_cache=False).logits, dense, rtol=1e-4, atol=1e-4)
        sh.unpatch(model)
    windowed = MistralForCausalLM(MistralConfig(sliding_window=64, **kw)).eval()
    with pytest.raises(ValueError, match="sliding-window"):
        sh.patch(windowed, DENSE)
