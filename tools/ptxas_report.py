#!/usr/bin/env python3
"""Summarise nvcc `-Xptxas -v` output: registers, shared memory, stack and spills per kernel.

    python tools/ptxas_report.py build.log          # or: ... 2>&1 | python tools/ptxas_report.py
    python tools/ptxas_report.py --json report.json build.log

Reads a build log (a file, or stdin), prints a table kernel x arch -> registers, static smem,
stack frame, spill stores/loads, and exits
    0  every kernel is free of spills and local memory,
    1  some function spills registers or has a stack frame (local memory): the offenders are
       listed (see docs on the CUDA engine: no spills, no local memory),
    2  the log holds no ptxas statistics at all (was it built with -Xptxas -v? with CUDA?).

The ptxas lines it understands (nvcc 12/13):
    ptxas info    : Compiling entry function '_Z...' for 'sm_80'
    ptxas info    : Function properties for _Z...
        0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    ptxas info    : Used 32 registers, used 1 barriers, 16384 bytes smem, 384 bytes cmem[0]
    ptxas warning : Registers are spilled to local memory in function '_Z...', ...
    ptxas warning : Local memory used for function '_Z...', size of stack frame: N bytes
"Function properties" of a non-entry (noinline) device function are reported too, under the
architecture being compiled at that point. Names are demangled with c++filt when available.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field

RE_ENTRY = re.compile(r"ptxas info\s*:\s*Compiling entry function '([^']+)' for '(\w+)'")
RE_PROPS = re.compile(r"ptxas info\s*:\s*Function properties for (\S+)")
RE_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
RE_USED = re.compile(r"ptxas info\s*:\s*Used (\d+) registers(.*)")
RE_BYTES = re.compile(r"(\d+) bytes (\w+)(?:\[\d+\])?")
RE_WARN_SPILL = re.compile(
    r"ptxas warning\s*:\s*Registers are spilled to local memory in function '([^']+)'")
RE_WARN_LMEM = re.compile(r"ptxas warning\s*:\s*Local memory used for function '([^']+)'")


@dataclass
class Stats:
    name: str  # mangled
    arch: str
    entry: bool = False  # a __global__ kernel (else a non-inlined device function)
    registers: int = 0
    smem: int = 0  # static shared memory, bytes
    stack: int = 0  # stack frame, bytes
    spill_stores: int = 0
    spill_loads: int = 0
    lmem: int = 0  # "bytes lmem" (older ptxas versions)
    seen: int = 0  # how many times the log reports it (one per translation unit)
    demangled: str = field(default="", compare=False)

    def offending(self) -> list[str]:
        why = []
        if self.spill_stores or self.spill_loads:
            why.append(f"spills {self.spill_stores} B stores / {self.spill_loads} B loads")
        if self.stack:
            why.append(f"{self.stack} B stack frame")
        if self.lmem:
            why.append(f"{self.lmem} B lmem")
        return why


def parse(lines) -> tuple[dict[tuple[str, str], Stats], set[str]]:
    """(name, arch) -> Stats, and the names ptxas warned about (spills / local memory)."""
    stats: dict[tuple[str, str], Stats] = {}
    warned: set[str] = set()
    arch = "?"  # architecture of the ptxas run in progress
    entry = None  # key of the entry function whose "Used N registers" comes next
    props = None  # key whose "N bytes stack frame" line comes next

    def get(name: str, arch: str) -> Stats:
        return stats.setdefault((name, arch), Stats(name, arch))

    for line in lines:
        if m := RE_ENTRY.search(line):
            name, arch = m.group(1), m.group(2)
            s = get(name, arch)
            s.entry = True
            s.seen += 1
            entry = (name, arch)
        elif m := RE_PROPS.search(line):
            props = (m.group(1), arch)
            if props != entry:  # a non-entry function (an entry's follow its entry line)
                get(*props).seen += 1
        elif (m := RE_FRAME.search(line)) and props is not None:
            s = stats[props]
            stack, st, ld = map(int, m.groups())
            s.stack, s.spill_stores, s.spill_loads = (
                max(s.stack, stack), max(s.spill_stores, st), max(s.spill_loads, ld))
            props = None
        elif (m := RE_USED.search(line)) and entry is not None:
            s = stats[entry]
            s.registers = max(s.registers, int(m.group(1)))
            for n, kind in RE_BYTES.findall(m.group(2)):
                if kind == "smem":
                    s.smem = max(s.smem, int(n))
                elif kind == "lmem":
                    s.lmem = max(s.lmem, int(n))
            entry = None
        elif m := (RE_WARN_SPILL.search(line) or RE_WARN_LMEM.search(line)):
            warned.add(m.group(1))
    return stats, warned


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    try:
        out = subprocess.run([cxxfilt], input="\n".join(names) + "\n", capture_output=True,
                             text=True, check=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {n: n for n in names}
    if len(out) != len(names):
        return {n: n for n in names}
    return dict(zip(names, out))


def shorten(text: str, width: int) -> str:
    if width <= 0 or len(text) <= width:
        return text
    keep = width - 3
    return text[: keep - keep // 3] + "..." + text[len(text) - keep // 3:]


def arch_key(arch: str):
    m = re.match(r"sm_(\d+)(\w*)", arch)
    return (int(m.group(1)), m.group(2)) if m else (1 << 30, arch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", nargs="?", help="build log (default: stdin)")
    ap.add_argument("--width", type=int, default=120,
                    help="truncate kernel names in the table to this width (0: never)")
    ap.add_argument("--json", metavar="PATH", help="also write the statistics as JSON")
    args = ap.parse_args(argv)

    if args.log and args.log != "-":
        with open(args.log, errors="replace") as f:
            stats, warned = parse(f)
    else:
        stats, warned = parse(sys.stdin)

    if not stats and not warned:
        print("ptxas_report: no ptxas statistics in the log "
              "(not built with -Xptxas -v, or no CUDA sources compiled)")
        return 2

    names = sorted({n for n, _ in stats} | warned)
    pretty = demangle(names)
    rows = sorted(stats.values(), key=lambda s: (pretty[s.name], arch_key(s.arch)))
    for s in rows:
        s.demangled = pretty[s.name]

    header = ("kernel", "arch", "regs", "smem", "stack", "spill st", "spill ld", "status")
    table = [header]
    for s in rows:
        label = shorten(s.demangled if s.entry else f"[device fn] {s.demangled}", args.width)
        table.append((label, s.arch, str(s.registers) if s.entry else "-",
                      str(s.smem) if s.entry else "-", str(s.stack), str(s.spill_stores),
                      str(s.spill_loads), "FAIL" if s.offending() else "ok"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths).rstrip())

    offenders = [(s.demangled, s.arch, "; ".join(s.offending())) for s in rows if s.offending()]
    offending_names = {s.name for s in rows if s.offending()}
    for n in sorted(warned - offending_names):  # warned about, but no -v statistics for it
        offenders.append((pretty[n], "?", "ptxas warned: spills or local memory"))

    kernels = sum(1 for s in rows if s.entry)
    print(f"\n{kernels} kernel x arch entries, "
          f"{sum(1 for s in rows if not s.entry)} device functions, {len(offenders)} offenders")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"functions": [asdict(s) for s in rows],
                       "offenders": [{"function": n, "arch": a, "why": w}
                                     for n, a, w in offenders]}, f, indent=1)
    if offenders:
        print("\nFAIL: spills or local memory (stack frame) in:")
        for n, a, w in offenders:
            print(f"  [{a}] {n}: {w}")
        return 1
    print("OK: no spills, no local memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
