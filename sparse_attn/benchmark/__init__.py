"""Microbenchmarks for sparse_attn ops (``sparse-attn bench`` / ``python -m sparse_attn.benchmark``).

``SUITES`` maps an op name to the module that benchmarks it. A suite module provides
``config_from_args(args)``, ``run(config, log=None) -> (rows, meta)``, ``format_table(rows)``
and ``PLOT`` (keyword arguments for :func:`harness.plot`); it may add its own command-line
options with ``add_arguments(parser)``. Decode suites (page selection, stream-K with a
``--schedule`` option) register here the same way.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .harness import machine_info, plot, read_bandwidth_gbs, time_fn, write_results

SUITES: dict[str, str] = {
    "prefill": "sparse_attn.benchmark.prefill",
    "decode": "sparse_attn.benchmark.decode",
    "stream_k": "sparse_attn.benchmark.stream_k",
    "vertical_slash": "sparse_attn.benchmark.vertical_slash",
}


def get_suite(name: str) -> ModuleType:
    if name not in SUITES:
        raise KeyError(f"unknown benchmark op {name!r}; known: {sorted(SUITES)}")
    return importlib.import_module(SUITES[name])


__all__ = ["SUITES", "get_suite", "time_fn", "machine_info", "read_bandwidth_gbs",
           "write_results", "plot"]
