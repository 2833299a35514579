"""What was compiled, and what this CPU offers (``sparse_attn.build_info()``)."""
from __future__ import annotations

import platform

import torch

from . import _C
from ._version import __version__


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build_info() -> dict:
    """Version, torch version, compiled engines (CUDA archs), CUTLASS version, CPU features.

    Example::

        import sparse_attn, json
        print(json.dumps(sparse_attn.build_info(), indent=2))
    """
    flags = _cpu_flags()
    cuda = {"compiled": bool(_C.cuda_compiled)}
    if _C.cuda_compiled:
        cuda.update(
            archs=_C.cuda_archs,
            device_code=_C.cuda_compiled_archs(),
            devices_visible=_C.cuda_device_count(),
            kernels="prefill (block-sparse, streaming, vertical-slash; bf16/fp16, head_dim 64/128), "
                    "paged cache write, Quest scores and selection, stream-K paged decode",
            status="sm_90a build run once on an H100 (2026-11-22: GPU tests passed, compute-sanitizer "
                   "clean); sm_80 never run; later changes not yet run on a GPU (README, Status)",
        )
    return {
        "version": __version__,
        "torch": torch.__version__,
        "engines": {
            "cpu": {
                "kernel_isa": _C.cpu_kernel_isa(),
                "bf16_tiles": "oneDNN packed brgemm (AMX where present)" if _C.cpu_bf16_packed_brgemm()
                else "fp32 brgemm on converted tiles",
                "threads": torch.get_num_threads(),
            },
            "cuda": cuda,
        },
        "cutlass": _C.cutlass_version or None,
        "cpu": {
            "machine": platform.machine(),
            "avx512": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags,
            "amx_fp16": "amx_fp16" in flags,
        },
    }
