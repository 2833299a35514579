"""sparse_attn.hf's fallback for transformers without AttentionInterface (< 4.48): the
attention modules' forward is replaced. Runs on any transformers: with transformers >= 5
the fallback is forced with ``patch(..., _mode="forward")`` and checked against the
AttentionInterface path; on an old transformers (no AttentionInterface) ``patch`` picks it
by itself and the same tests run (checked by hand on 4.47.1, see the closing note)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparse_attn.hf as sh  # noqa: E402
from hf_models import DENSE, MIXED, tiny_model  # noqa: E402

HAS_INTERFACE = sh._has_attention_interface()


def patch_forward(model, cfg, **kw):
    return sh.patch(model, cfg, min_sparse_tokens=64, _mode="forward" if HAS_INTERFACE else None, **kw)


def left_padded(seed):
    ids = torch.randint(1, 128, (2, 260), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :37] = 0
    ids[1, :37] = 0
    return ids, mask


@torch.no_grad()
def test_forward_mode_dense_config_matches_unpatched_and_unpatch_restores():
    model = tiny_model()
    ids, mask = left_padded(1)
    want = model(ids, attention_mask=mask).logits
    patch_forward(model, DENSE)
    assert sh.is_patched(model) and "forward" in model.__dict__
    got = model(ids, attention_mask=mask).logits
    sh.unpatch(model)
    assert not sh.is_patched(model) and "forward" not in model.__dict__
    assert all("forward" not in m.__dict__ for m in sh._attention_modules(model))
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1, 37:], want[1, 37:], rtol=1e-4, atol=1e-4)  # real tokens only
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, want, rtol=0, atol=0)


@torch.no_grad()
def test_forward_mode_generate_dense_config_matches_unpatched():
    model = tiny_model()
    ids, mask = left_padded(2)
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, output_scores=True,
              return_dict_in_generate=True, pad_token_id=0)
    want = model.generate(ids, **kw)
    patch_forward(model, DENSE)
    got = model.generate(ids, **kw)
    sh.unpatch(model)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_INTERFACE, reason="compares with the AttentionInterface path")
@torch.no_grad()
def test_forward_mode_sparse_prefill_equals_interface_mode():
    """Same kernels, same patterns: the two ways of patching give the same logits (the
    interface path is checked against the float64 reference in test_hf.py), including a
    left-padded batch, and greedy generation picks the same tokens."""
    model = tiny_model()
    ids, mask = left_padded(3)
    sh.patch(model, MIXED, min_sparse_tokens=64)
    want = model(ids, attention_mask=mask).logits
    gen_want = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    sh.unpatch(model)
    dense = model(ids, attention_mask=mask).logits
    patch_forward(model, MIXED)
    got = model(ids, attention_mask=mask).logits
    gen_got = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    sh.unpatch(model)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1, 37:], want[1, 37:], rtol=1e-5, atol=1e-5)
    assert (got[0] - dense[0]).abs().max() > 1e-3  # the patterns do change the result
    assert torch.equal(gen_got, gen_want)


@torch.no_grad()
def test_forward_mode_rejects_4d_masks():
    model = tiny_model()
    ids = torch.randint(1, 128, (1, 80), generator=torch.Generator().manual_seed(4))
    patch_forward(model, MIXED)
    try:
        with pytest.raises(ValueError, match="2D padding mask"):
            model(ids, attention_mask=torch.ones(1, 1, 80, 80))
    finally:
        sh.unpatch(model)
