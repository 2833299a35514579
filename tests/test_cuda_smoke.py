"""The CUDA build: compiled here, run only where a GPU exists."""
import pytest

import sparse_attn
from sparse_attn import _C


def test_build_info_reports_engines():
    info = sparse_attn.build_info()
    assert info["version"] == sparse_attn.__version__
    assert info["engines"]["cpu"]["kernel_isa"] in ("avx512", "default")
    assert info["engines"]["cuda"]["compiled"] == bool(_C.cuda_compiled)
    if _C.cuda_compiled:
        assert info["cutlass"] and info["engines"]["cuda"]["archs"]


@pytest.mark.cuda
@pytest.mark.skipif(not (_C.cuda_compiled and _C.cuda_device_count() > 0), reason="no CUDA device (or CUDA not built)")
@pytest.mark.parametrize("rows,cols", [(1, 1), (64, 64), (63, 65), (130, 200), (1000, 17)])
def test_smoke_kernel_copies_ragged_matrices(rows, cols):
    assert _C.cuda_smoke_selftest(rows, cols) == 0
