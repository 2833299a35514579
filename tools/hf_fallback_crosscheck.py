"""Cross-version check of sparse_attn.hf's forward-patching fallback (see
tools/check_hf_fallback.sh): `save` (transformers >= 5, AttentionInterface path) writes a tiny
Llama's weights and its sparse-patched logits/generation; `load` (transformers < 4.48, where
patch() falls back to replacing the attention modules' forward) loads the same weights and
compares. Both must agree exactly: same kernels, same patterns."""
import os
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import sparse_attn.hf as sh  # noqa: E402
import test_hf_fallback as T  # noqa: E402

OUT = os.environ.get("OUT_DIR", "/tmp")
model = T.tiny_model()
ids, mask = T.left_padded(5)
if sys.argv[1] == "save":
    torch.save(model.state_dict(), OUT + "/sd.pt")
else:
    model.load_state_dict(torch.load(OUT + "/sd.pt"))
with torch.no_grad():
    dense = model(ids, attention_mask=mask).logits
    sh.patch(model, T.MIXED, min_sparse_tokens=64)
    mode = model._sparse_attn_patched["mode"]
    got = model(ids, attention_mask=mask).logits
    gen = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
torch.save({"dense": dense, "got": got, "gen": gen}, f"{OUT}/{sys.argv[1]}.pt")
print(transformers.__version__, mode)
if sys.argv[1] == "load":
    a = torch.load(OUT + "/save.pt")
    print("dense diff", (a["dense"][0] - dense[0]).abs().max().item(), (a["dense"][1, 37:] - dense[1, 37:]).abs().max().item())
    print("sparse diff", (a["got"][0] - got[0]).abs().max().item(), (a["got"][1, 37:] - got[1, 37:]).abs().max().item())
    print("sparse vs dense", (got[0] - dense[0]).abs().max().item())
    print("gen equal", torch.equal(a["gen"][:, -4:], gen[:, -4:]))
    ok = torch.equal(a["got"][0], got[0]) and torch.equal(a["got"][1, 37:], got[1, 37:]) and torch.equal(a["gen"], gen)
    sys.exit(0 if ok and mode == "forward" else 1)
