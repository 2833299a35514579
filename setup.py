"""Build driver: setuptools calls CMake + Ninja to build the extension `sparse_attn._C`.

torch is taken from the environment, so install with

    pip install --no-build-isolation .          # or: python setup.py build_ext --inplace

Build options (environment variables):
    SPARSE_ATTN_CUDA=1/0          force the CUDA engine on/off (default: on when nvcc is found)
    SPARSE_ATTN_CUDA_ARCHS="80;90a"  CUDA architectures (else TORCH_CUDA_ARCH_LIST, else 80;90a)
    CUTLASS_DIR=/path/to/cutlass  CUTLASS checkout (else third_party/cutlass, else the
                                  `nvidia-cutlass` pip package)
    SPARSE_ATTN_BUILD_TYPE=Release|RelWithDebInfo|Debug
    MAX_JOBS=N                    parallel compile jobs
The build never calls torch.cuda: a CPU-only torch is enough to compile the CUDA engine.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "sparse_attn" / "_version.py").read_text()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_cutlass_include():
    """CUTLASS_DIR, else third_party/cutlass, else the nvidia-cutlass pip package."""
    candidates = []
    if os.environ.get("CUTLASS_DIR"):
        candidates.append(Path(os.environ["CUTLASS_DIR"]) / "include")
    candidates.append(ROOT / "third_party" / "cutlass" / "include")
    try:
        import cutlass_library  # from the nvidia-cutlass package

        candidates.append(Path(cutlass_library.__file__).parent / "source" / "include")
    except ImportError:
        pass
    for c in candidates:
        if (c / "cute" / "tensor.hpp").exists():
            return str(c)
    return None


def cuda_archs():
    archs = os.environ.get("SPARSE_ATTN_CUDA_ARCHS")
    if not archs and os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # "8.0;9.0a+PTX" -> "80;90a"
        parts = re.split(r"[;\s,]+", os.environ["TORCH_CUDA_ARCH_LIST"].strip())
        archs = ";".join(p.replace("+PTX", "").replace(".", "") for p in parts if p)
    return archs or "80;90a"


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11
        import torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)

        want_cuda = os.environ.get("SPARSE_ATTN_CUDA")
        nvcc = find_nvcc()
        if want_cuda == "1" and not nvcc:
            raise RuntimeError("SPARSE_ATTN_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        with_cuda = bool(nvcc) if want_cuda is None else want_cuda == "1"
        cutlass = find_cutlass_include() if with_cuda else None
        if with_cuda and not cutlass:
            raise RuntimeError(
                "the CUDA engine needs CUTLASS/CuTe headers: set CUTLASS_DIR, put a checkout in "
                "third_party/cutlass, or `pip install nvidia-cutlass` (or set SPARSE_ATTN_CUDA=0)"
            )

        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('SPARSE_ATTN_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            f"-DSPARSE_ATTN_VERSION={read_version()}",
            f"-DSPARSE_ATTN_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            # torch's own CUDA runtime is only linked when torch itself was built with CUDA
            f"-DSPARSE_ATTN_TORCH_HAS_CUDA={'ON' if torch.version.cuda else 'OFF'}",
            "-G", "Ninja",
        ]
        if with_cuda:
            args += [
                f"-DCMAKE_CUDA_COMPILER={nvcc}",
                f"-DSPARSE_ATTN_CUDA_ARCHS={cuda_archs()}",
                f"-DCUTLASS_INCLUDE_DIR={cutlass}",
            ]
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 2)
        subprocess.check_call(["cmake", str(ROOT), *args], cwd=build_temp)
        subprocess.check_call(["cmake", "--build", ".", "-j", jobs], cwd=build_temp)


setup(
    version=read_version(),
    packages=["sparse_attn", "sparse_attn.benchmark", "sparse_attn.patterns"],
    package_dir={"sparse_attn": "sparse_attn", "sparse_attn.patterns": "patterns"},
    package_data={"sparse_attn.patterns": ["*.json"]},
    ext_modules=[CMakeExtension("sparse_attn._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
