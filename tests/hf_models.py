"""Tiny random Llama models and pattern configs shared by the Hugging Face tests (no import
that needs transformers >= 5, so that the fallback tests also run on old versions)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparse_attn.pattern_config import PatternConfig

L, HQ, HKV, D = 2, 6, 2, 16
PATTERNS = [{"pattern": "streaming", "params": {"sink_tokens": 16, "window_tokens": 64}},
            {"pattern": "vertical_slash", "params": {"n_vertical": 16, "n_slash": 32}},
            {"pattern": "block_sparse", "params": {"density": 0.3, "block_size": 64}},
            {"pattern": "dense", "params": {}}]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=96, intermediate_size=128, num_hidden_layers=L,
                      num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D, max_position_embeddings=4096,
                      pad_token_id=0, eos_token_id=None, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")
    return model


def config(kinds):
    """kinds(layer, head) -> index into PATTERNS."""
    layers = [[{"head": h, **PATTERNS[kinds(l, h)]} for h in range(HQ)] for l in range(L)]
    return PatternConfig({"id": "tiny", "num_layers": L, "num_heads": HQ, "num_kv_heads": HKV, "head_dim": D}, layers)


MIXED = config(lambda l, h: (h + l) % 4)
DENSE = config(lambda l, h: 3)
