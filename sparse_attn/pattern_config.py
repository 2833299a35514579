"""Per-head pattern configs: the JSON files under ``patterns/`` (schema in patterns/README.md).

A config says, for every layer and every query head of a model, which sparse pattern the
head runs at prefill (:class:`~sparse_attn.search.Pattern`), with the recall and cost the
search measured. Heads carry global indices, so a tensor-parallel shard can take its slice
with :meth:`PatternConfig.shard`.

Example::

    from sparse_attn.pattern_config import PatternConfig
    cfg = PatternConfig.load("smollm2-135m-instruct")        # a shipped config, by name
    cfg.pattern(0, 3)                                        # Pattern of layer 0, query head 3
    cfg.summary()                                            # {"dense": n, "streaming": n, ...}
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from .search import KINDS, Pattern, pick_pattern

__all__ = ["PatternConfig", "SCHEMA", "shipped_configs"]

SCHEMA = "sparse-attn/patterns/v1"


def _shipped_dir() -> Path:
    """patterns/ is installed as the package ``sparse_attn.patterns``; in a source tree
    (PYTHONPATH=repo) it sits next to the package."""
    try:
        from . import patterns
        return Path(patterns.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "patterns"


def shipped_configs() -> List[str]:
    """Names of the configs installed with the package (``PatternConfig.load(name)``)."""
    return sorted(p.stem for p in _shipped_dir().glob("*.json"))


class PatternConfig:
    """Patterns per layer and query head, plus what they were found on.

    ``layers[l][h]`` is a dict ``{"head", "pattern", "params", "recall", "cost"}`` (``head`` the
    global query head index)."""

    def __init__(self, model: dict, layers: List[List[dict]], *, calibration: Optional[dict] = None,
                 search: Optional[dict] = None):
        self.model = dict(model)
        self.calibration = dict(calibration or {})
        self.search = dict(search or {})
        self.layers = [[dict(h) for h in layer] for layer in layers]
        self._check()

    # ------------------------------------------------------------------ checks
    def _check(self):
        for key in ("num_layers", "num_heads", "num_kv_heads", "head_dim"):
            v = self.model.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"pattern config: model.{key} must be an int >= 1, got {v!r}")
        if len(self.layers) != self.model["num_layers"]:
            raise ValueError(f"pattern config: {len(self.layers)} layers listed, model.num_layers is "
                             f"{self.model['num_layers']}")
        for li, layer in enumerate(self.layers):
            for h in layer:
                where = f"pattern config: layer {li}, head {h.get('head')!r}"
                if isinstance(h.get("head"), bool) or not isinstance(h.get("head"), int) \
                        or not 0 <= h["head"] < self.model["num_heads"]:
                    raise ValueError(f"{where}: 'head' must be a global query head index in "
                                     f"[0, {self.model['num_heads']})")
                if h.get("pattern") not in KINDS:
                    raise ValueError(f"{where}: unknown pattern {h.get('pattern')!r}, expected one of {KINDS}")
                try:
                    Pattern(h["pattern"], dict(h.get("params", {})))
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
            heads = [h["head"] for h in layer]
            if len(set(heads)) != len(heads):
                raise ValueError(f"pattern config: layer {li} lists a head twice")

    def validate(self, *, num_layers: int, num_heads: int, num_kv_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, heads: Optional[Sequence[int]] = None) -> None:
        """Raises ValueError unless the config fits a model with these sizes and lists every
        head of ``heads`` (default all ``num_heads``) in every layer."""
        want = {"num_layers": num_layers, "num_heads": num_heads, "num_kv_heads": num_kv_heads,
                "head_dim": head_dim}
        for key, v in want.items():
            if v is not None and self.model[key] != v:
                raise ValueError(f"pattern config for {self.model.get('id', '?')!r} has {key} = {self.model[key]}, "
                                 f"the model has {v}")
        need = set(range(num_heads) if heads is None else heads)
        for li, layer in enumerate(self.layers):
            missing = need - {h["head"] for h in layer}
            if missing:
                raise ValueError(f"pattern config: layer {li} has no pattern for head(s) {sorted(missing)}")

    # ------------------------------------------------------------------ access
    def pattern(self, layer: int, head: int) -> Pattern:
        """The pattern of global query head ``head`` in ``layer``."""
        for h in self.layers[layer]:
            if h["head"] == head:
                return Pattern(h["pattern"], dict(h.get("params", {})))
        raise KeyError(f"pattern config: layer {layer} has no head {head}")

    def layer_patterns(self, layer: int, heads: Optional[Sequence[int]] = None) -> List[Pattern]:
        """Patterns of ``heads`` (default all, in order) of one layer."""
        heads = range(self.model["num_heads"]) if heads is None else heads
        return [self.pattern(layer, h) for h in heads]

    def shard(self, heads: Sequence[int]) -> "PatternConfig":
        """A config holding only the given global query heads (a tensor-parallel shard)."""
        keep = set(heads)
        layers = [[h for h in layer if h["head"] in keep] for layer in self.layers]
        return PatternConfig(self.model, layers, calibration=self.calibration, search=self.search)

    def with_target(self, target_recall: float, time_model: Optional[dict] = None) -> "PatternConfig":
        """The same search re-picked for another target recall, from the per-head tables the
        search kept (``search_model(..., keep_table=True)``): no model run needed. Cheapest by
        ``time_model`` (:func:`~sparse_attn.search.measure_time_model`) when given, else by the
        config's own time model if it has one, else by cost."""
        cands = self.search.get("candidates")
        if not cands or any("table" not in h for layer in self.layers for h in layer):
            raise ValueError("with_target: this config has no per-head candidate tables (search with keep_table=True)")
        tm = time_model if time_model is not None else self.search.get("time_model")
        pats = [Pattern(c["pattern"], dict(c.get("params", {}))) for c in cands]
        layers = [[{"head": h["head"], **pick_pattern(pats, h["table"], target_recall, tm), "table": h["table"]}
                   for h in layer] for layer in self.layers]
        search = dict(self.search, target_recall=target_recall)
        if tm:
            search["time_model"] = tm
        return PatternConfig(self.model, layers, calibration=self.calibration, search=search)

    def summary(self) -> Dict[str, float]:
        """Heads per pattern kind, and the mean cost (fraction of dense FLOPs) and recall."""
        heads = [h for layer in self.layers for h in layer]
        out: Dict[str, float] = dict(Counter(h["pattern"] for h in heads))
        if heads:
            out["mean_cost"] = round(sum(h.get("cost", 1.0) for h in heads) / len(heads), 4)
            out["mean_recall"] = round(sum(h.get("recall", 1.0) for h in heads) / len(heads), 4)
            if all("time" in h for h in heads):  # picked under a measured time model
                out["mean_time"] = round(sum(h["time"] for h in heads) / len(heads), 4)
        return out

    # ------------------------------------------------------------------ I/O
    def to_json(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "calibration": self.calibration, "search": self.search,
                "layers": [{"layer": i, "heads": layer} for i, layer in enumerate(self.layers)]}

    def save(self, path: Union[str, Path]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: dict) -> "PatternConfig":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"pattern config: 'schema' must be {SCHEMA!r}, got "
                             f"{data.get('schema') if isinstance(data, dict) else type(data).__name__!r}")
        layers = data.get("layers")
        if not isinstance(layers, list) or any(not isinstance(l, dict) or "heads" not in l for l in layers):
            raise ValueError("pattern config: 'layers' must be a list of {'layer', 'heads'} objects")
        if [l.get("layer") for l in layers] != list(range(len(layers))):
            raise ValueError("pattern config: 'layers' must list layers 0, 1, ... in order")
        return cls(data.get("model", {}), [l["heads"] for l in layers], calibration=data.get("calibration"),
                   search=data.get("search"))

    @classmethod
    def load(cls, path_or_name: Union[str, Path]) -> "PatternConfig":
        """From a JSON file, or by the name of a shipped config (:func:`shipped_configs`)."""
        p = Path(path_or_name)
        shipped = _shipped_dir() / f"{path_or_name}.json"
        if not p.exists() and shipped.exists():
            p = shipped
        if not p.exists():
            raise FileNotFoundError(f"pattern config {str(path_or_name)!r}: no such file and no shipped config "
                                    f"of that name (shipped: {shipped_configs()})")
        return cls.from_json(json.loads(p.read_text()))
