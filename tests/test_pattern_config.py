"""PatternConfig (JSON schema, validation, shards, re-targeting) and search_layer's choice."""
import json

import pytest
import torch

from sparse_attn.pattern_config import SCHEMA, PatternConfig, shipped_configs
from sparse_attn.search import (Pattern, computed_fraction, default_patterns, evaluate_candidates,
                                 measure_time_model, modeled_time, pick_pattern, search_layer)

from conftest import qkv

MODEL = {"id": "m", "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16}


def heads(kind="dense", params=None, n=4):
    return [{"head": h, "pattern": kind, "params": dict(params or {}), "recall": 1.0, "cost": 1.0} for h in range(n)]


def test_roundtrip_shard_and_validate(tmp_path):
    layers = [heads(), heads("streaming", {"sink_tokens": 64, "window_tokens": 512})]
    cfg = PatternConfig(MODEL, layers, calibration={"text": "t", "tokens": 10})
    path = tmp_path / "c.json"
    cfg.save(path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and [l["layer"] for l in data["layers"]] == [0, 1]
    back = PatternConfig.load(path)
    assert back.to_json() == cfg.to_json()
    assert back.pattern(1, 2) == Pattern("streaming", {"sink_tokens": 64, "window_tokens": 512})
    back.validate(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)
    with pytest.raises(ValueError, match="num_layers"):
        back.validate(num_layers=3, num_heads=4)
    shard = back.shard([2, 3])  # a tensor-parallel rank holding query heads 2 and 3
    assert [h["head"] for h in shard.layers[0]] == [2, 3]
    shard.validate(num_layers=2, num_heads=4, heads=[2, 3])
    with pytest.raises(ValueError, match=r"no pattern for head\(s\) \[0, 1\]"):
        shard.validate(num_layers=2, num_heads=4)
    assert back.summary()["dense"] == 4 and back.summary()["streaming"] == 4


@pytest.mark.parametrize("bad,match", [
    ({"layers": [heads()]}, "num_layers"),
    ({"layers": [heads(), heads("magic")]}, "unknown pattern 'magic'"),
    ({"layers": [heads(), heads("streaming", {"sink_tokens": 4})]}, "missing parameter"),
    ({"layers": [heads(), heads("block_sparse", {"density": 1.5, "block_size": 64})]}, "density"),
    ({"layers": [heads(), heads()[:3] + [dict(heads()[0])]]}, "lists a head twice"),
    ({"layers": [heads(), heads(n=5)]}, "global query head index"),
    ({"model": dict(MODEL, num_heads=0)}, "num_heads"),
])
def test_invalid_configs(bad, match):
    kw = {"model": MODEL, "layers": [heads(), heads()]}
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        PatternConfig(kw["model"], kw["layers"])


def test_from_json_errors(tmp_path):
    with pytest.raises(ValueError, match="schema"):
        PatternConfig.from_json({"schema": "other"})
    with pytest.raises(ValueError, match="in order"):
        PatternConfig.from_json({"schema": SCHEMA, "model": MODEL, "layers": [{"layer": 1, "heads": heads()},
                                                                                {"layer": 0, "heads": heads()}]})
    with pytest.raises(FileNotFoundError, match="no shipped config"):
        PatternConfig.load(tmp_path / "missing.json")


def test_pick_pattern_and_with_target():
    pats = [Pattern("streaming", {"sink_tokens": 1, "window_tokens": 2}), Pattern("dense"),
            Pattern("block_sparse", {"density": 0.2, "block_size": 64})]
    table = [[0.90, 0.1], [1.0, 1.0], [0.97, 0.3]]
    assert pick_pattern(pats, table, 0.95)["pattern"] == "block_sparse"
    assert pick_pattern(pats, table, 0.85)["pattern"] == "streaming"
    assert pick_pattern(pats, table, 0.99)["pattern"] == "dense"
    layers = [[{"head": h, **pick_pattern(pats, table, 0.95), "table": table} for h in range(4)] for _ in range(2)]
    cfg = PatternConfig(MODEL, layers, search={"candidates": [p.to_json() for p in pats], "target_recall": 0.95})
    assert cfg.with_target(0.85).pattern(0, 0).kind == "streaming"
    assert cfg.with_target(0.99).summary()["dense"] == 8
    with pytest.raises(ValueError, match="tables"):
        PatternConfig(MODEL, [heads(), heads()]).with_target(0.9)


TM = {"kinds": {"streaming": {"fixed": 0.05, "slope": 1.0}, "block_sparse": {"fixed": 0.3, "slope": 1.0}}}


def test_pick_pattern_by_modeled_time():
    """With a time model the cheapest is the fastest: here block-sparse (cost 0.3) costs
    0.6 in time and streaming (cost 0.5) 0.55, so the pick flips."""
    pats = [Pattern("streaming", {"sink_tokens": 1, "window_tokens": 2}), Pattern("dense"),
            Pattern("block_sparse", {"density": 0.2, "block_size": 64})]
    table = [[0.96, 0.5], [1.0, 1.0], [0.97, 0.3]]
    assert pick_pattern(pats, table, 0.95)["pattern"] == "block_sparse"
    pick = pick_pattern(pats, table, 0.95, TM)
    assert pick["pattern"] == "streaming" and pick["time"] == 0.55 and pick["cost"] == 0.5
    assert modeled_time(pats[1], 1.0, TM) == 1.0 and modeled_time(pats[2], 0.3, None) == 0.3
    with pytest.raises(ValueError, match="no fit for pattern kind 'vertical_slash'"):
        modeled_time(Pattern("vertical_slash", {"n_vertical": 1, "n_slash": 1}), 0.5, TM)
    layers = [[{"head": h, **pick_pattern(pats, table, 0.95), "table": table} for h in range(4)] for _ in range(2)]
    cfg = PatternConfig(MODEL, layers, search={"candidates": [p.to_json() for p in pats], "target_recall": 0.95})
    timed = cfg.with_target(0.95, TM)
    assert timed.pattern(1, 3).kind == "streaming" and timed.search["time_model"] == TM
    assert timed.summary()["mean_time"] == 0.55 and "mean_time" not in cfg.summary()
    assert timed.with_target(0.95).pattern(0, 0).kind == "streaming"  # the config keeps its time model


def test_measure_time_model_fits_every_kind():
    q, k, _ = qkv(1, 512, 512, 4, 2, 64, torch.bfloat16, seed=5)
    pats = [Pattern("streaming", {"sink_tokens": 64, "window_tokens": w}) for w in (64, 256)]
    pats += [Pattern("block_sparse", {"density": d, "block_size": 64}) for d in (0.3, 0.7)]
    pats += [Pattern("vertical_slash", {"n_vertical": 64, "n_slash": 128})]
    tm = measure_time_model([q, q], [k, k], pats, repeats=1)
    assert set(tm["kinds"]) == {"streaming", "block_sparse", "vertical_slash"}
    for kind, n in (("streaming", 4), ("block_sparse", 4), ("vertical_slash", 2)):
        fit = tm["kinds"][kind]
        assert len(fit["points"]) == n and fit["fixed"] >= 0 and fit["slope"] >= 0
        assert all(0 < c <= 1 and t > 0 for c, t in fit["points"])
    assert len(tm["dense_seconds"]) == 2 and tm["group"] == 2 and tm["seqlen"] == 512
    json.dumps(tm)  # stored in the config as is
    with pytest.raises(ValueError, match="batch must be 1"):
        measure_time_model(torch.cat([q, q]), torch.cat([k, k]), pats)
    with pytest.raises(ValueError, match="equally long"):
        measure_time_model([q, q], [k], pats)


def test_search_layer_picks_cheapest_that_reaches_target():
    q, k, _ = qkv(1, 384, 384, 4, 2, 32, torch.float32, seed=7)
    pats = [Pattern("streaming", {"sink_tokens": 16, "window_tokens": w}) for w in (32, 128)]
    pats += [Pattern("vertical_slash", {"n_vertical": 32, "n_slash": 64}),
             Pattern("block_sparse", {"density": 0.5, "block_size": 64}), Pattern("dense")]
    cands = [p.candidate(q, k) for p in pats]
    recall, _ = evaluate_candidates(q, k, cands)
    cost = torch.stack([computed_fraction(c, 384, 384, 4)[0] for c in cands])  # [C, Hq], what the kernel computes
    for target in (0.3, 0.6, 0.9, 1.0):
        picks = search_layer(q, k, target_recall=target, patterns=pats, keep_table=True)
        for h, pick in enumerate(picks):
            ok = [c for c in range(len(pats)) if recall[c, 0, h] >= target]
            chosen = pats.index(Pattern(pick["pattern"], pick["params"]))
            assert chosen in ok or pick["pattern"] == "dense"
            assert all(cost[chosen, h] <= cost[c, h] for c in ok)
            assert pick["table"][chosen] == [round(float(recall[chosen, 0, h]), 5), round(float(cost[chosen, h]), 5)]
    assert all(p["pattern"] == "dense" for p in search_layer(q, k, target_recall=1.0, patterns=pats[:4]))
    with pytest.raises(ValueError, match="target_recall"):
        search_layer(q, k, target_recall=0)


def test_default_patterns_are_valid_and_include_dense():
    pats = default_patterns()
    assert Pattern("dense") in pats and {p.kind for p in pats} == {"dense", "streaming", "vertical_slash",
                                                                     "block_sparse"}


def test_shipped_config_fits_smollm2():
    assert "smollm2-135m-instruct" in shipped_configs()
    cfg = PatternConfig.load("smollm2-135m-instruct")
    cfg.validate(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64)  # SmolLM2-135M's sizes
    assert cfg.model["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert 0 < cfg.summary()["mean_cost"] < 1
