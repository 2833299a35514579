#!/usr/bin/env bash
# One command for the first machine with a GPU: everything the CPU-only development machines
# cannot check (DESIGN.md, "CUDA without a GPU").
#
#   bash bench/gpu_check.sh [RESULTS_DIR]      # default bench/results/gpu_check_<date>
#
# Steps (each one's status is reported; the script keeps going after a failure and exits
# non-zero if any step FAILED):
#   env          nvidia-smi, nvcc, python/torch versions
#   build        SPARSE_ATTN_CUDA=1 pip install --no-build-isolation -v .   -> build.log
#   build_inplace  python setup.py build_ext --inplace (incremental, same build dir): the tests
#                and `python -m bench` run from the repo root, where the in-tree package
#                shadows the installed one, so it must hold the extension just built
#   import       which sparse_attn / _C is imported, and that CUDA is visible
#   ptxas        tools/ptxas_report.py on build.log: no spills, no local memory (if the build
#                was incremental and compiled no CUDA, csrc/cuda/*.cu is recompiled for it)
#   host_checks  csrc/cuda/host_checks/run.sh (CuTe layout checks on the CPU)
#   pytest_cuda  python -m pytest -q -m cuda tests/ (test_cuda_smoke, _prefill, _decode, _paged,
#                and the CUDA cases of test_vertical_slash.py)
#   memcheck     compute-sanitizer --tool memcheck  on pytest -m cuda -x tests/ -k smoke (the
#                smoke kernel, test_cuda_prefill.py::test_smoke_small_case_for_sanitizers: the
#                prefill kernel in all three modes, gathered column tiles included, and the two
#                vertical-slash index kernels; test_cuda_decode.py::test_smoke_decode_for_sanitizers:
#                the decode fix-up; test_cuda_paged.py::test_smoke_paged_ops_for_sanitizers: write,
#                scores, selection)
#   racecheck    compute-sanitizer --tool racecheck on the same
#   synccheck    compute-sanitizer --tool synccheck on the decode smoke test (its barriers)
#   decode_separate  pytest -m cuda tests/test_cuda_decode.py with SPARSE_ATTN_DECODE_MERGE=separate
#                (the fallback merge kernel on every decode test)
#   gpu_prefill  bench/gpu_prefill.py: CUDA prefill (block-sparse, streaming, vertical-slash) vs
#                SDPA flash / flex_attention (GPU_BENCH_ARGS, e.g. --quick)
#   gpu_decode   bench/gpu_decode.py: CUDA paged / Quest decode, GB/s against the bytes that must
#                be read, vs SDPA (and flash_attn_with_kvcache if installed) (GPU_BENCH_ARGS)
#   bench        python -m sparse_attn.benchmark --quick (the CPU suite)
# Env: SPARSE_ATTN_CUDA_ARCHS (passed through to the build; 90a alone halves the build on an
# H100), PIP_EXTRA_ARGS (e.g. --no-deps on an offline machine), PYTHON (default python),
# GPU_CHECK_INSTALL=0 (skip the pip install: it rebuilds everything, several minutes of a
# short GPU lease; the in-place build is what the tests import anyway), CXX / CC /
# CUDAHOSTCXX (the host compiler, see the env step).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/bench/results/gpu_check_$(date +%Y%m%d_%H%M%S)}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
cd "$ROOT" || exit 2

declare -a STEPS=() RESULTS=()
FAILED=0
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

# record NAME STATUS [NOTE]   STATUS: PASS | FAIL | SKIP | WARN
T_LAST=$(date +%s)
record() {  # also notes the seconds since the previous record (the step's time)
  local now; now=$(date +%s)
  set -- "$1" "$2" "${3:+$3, }$((now - T_LAST)) s"
  T_LAST=$now
  STEPS+=("$1"); RESULTS+=("$2${3:+ ($3)}")
  if [[ "$2" == FAIL ]]; then FAILED=1; fi
  printf '%-14s %s\n' "$1" "$2${3:+ ($3)}" | tee -a "$SUMMARY"
  return 0
}

# run_step NAME LOGFILE CMD...  runs CMD with stdout+stderr tee'd to $OUT/LOGFILE.
# Returns CMD's exit status; the caller records it.
run_step() {
  local name="$1" log="$OUT/$2"; shift 2
  echo; echo "===== [$name] $*" | tee "$log"
  "$@" 2>&1 | tee -a "$log"
  return "${PIPESTATUS[0]}"
}

pytest_status() {  # pytest exit code -> status (5: nothing collected)
  case "$1" in 0) echo PASS ;; 5) echo WARN ;; *) echo FAIL ;; esac
}

echo "gpu_check: results in $OUT"
git -C "$ROOT" log -1 --oneline >"$OUT/git_head.txt" 2>&1
git -C "$ROOT" status --short >>"$OUT/git_head.txt" 2>&1

# ---------------------------------------------------------------- env
{
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  command -v nvcc >/dev/null && nvcc --version
  # The host compiler matters: on the first GPU machine (2026-11-22) the image's default
  # /opt/gcc/bin/g++ gave a module that crashed inside libstdc++'s stream code whenever an
  # error message formatted a number; /usr/bin/g++ (same GCC 13.3) was fine. Set CXX to choose.
  echo "CXX=${CXX:-<unset>} CC=${CC:-<unset>} CUDAHOSTCXX=${CUDAHOSTCXX:-<unset>}; g++ on PATH: $(command -v g++)"
  "${CXX:-g++}" --version | head -1
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count()); [print(" ", torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  record env PASS "$(nvidia-smi -L | head -1)"
else
  record env FAIL "nvidia-smi missing or no GPU"
fi

# ---------------------------------------------------------------- build
# shellcheck disable=SC2086
if [[ "${GPU_CHECK_INSTALL:-1}" == 0 ]]; then
  record build SKIP "GPU_CHECK_INSTALL=0"
elif run_step build build.log env SPARSE_ATTN_CUDA=1 "$PY" -m pip install --no-build-isolation -v ${PIP_EXTRA_ARGS:-} .; then
  record build PASS
else
  record build FAIL "see build.log"
fi
if run_step build_inplace build_inplace.log env SPARSE_ATTN_CUDA=1 "$PY" setup.py build_ext --inplace; then
  record build_inplace PASS
else
  record build_inplace FAIL "see build_inplace.log"
fi

# ---------------------------------------------------------------- import
run_step import import.log "$PY" -c '
import sparse_attn, sparse_attn._C as C, torch
print("sparse_attn:", sparse_attn.__file__)
print("_C:", C.__file__)
print("_C attributes:", ", ".join(a for a in dir(C) if not a.startswith("__")))
assert torch.cuda.is_available(), "torch sees no CUDA device"
# An error message that formats numbers, raised from the extension on the CPU and on the GPU:
# a toolchain that breaks libstdc++ in the module crashes here instead of raising.
for dev in ("cpu", "cuda"):
    try:
        torch.ops.sparse_attn.quest_select(torch.zeros(1, 1, 2, device=dev), torch.tensor([99], dtype=torch.int32, device=dev), 16, 16, 0, 0)
    except ValueError as e:
        assert "99" in str(e), e
        print(dev, "error message ok:", str(e).splitlines()[0])
    else:
        raise AssertionError("quest_select accepted seqlens 99 for 2 pages of 16")
'
rc=$?
if [[ $rc == 0 ]]; then record import PASS
elif [[ $rc -ge 128 ]]; then record import FAIL "crashed (signal $((rc - 128))): rebuild with another host compiler, e.g. CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++"
else record import FAIL "see import.log"; fi

# ---------------------------------------------------------------- ptxas
cat "$OUT/build.log" "$OUT/build_inplace.log" >"$OUT/ptxas_source.log" 2>/dev/null
"$PY" tools/ptxas_report.py "$OUT/ptxas_source.log" >/dev/null 2>&1
if [[ $? == 2 ]]; then
  # Incremental build: nothing was compiled, so the log has no ptxas statistics. Compile the
  # CUDA sources directly with the flags CMakeLists.txt gives them (every kernel directory).
  echo "(no ptxas statistics in the build log: compiling csrc/cuda/*.cu for the report)"
  # CUTLASS as setup.py finds it: $CUTLASS_DIR, third_party/cutlass, the nvidia-cutlass wheel
  cutlass_inc="$("$PY" - <<'EOF' 2>/dev/null
import os, sys
for c in [os.path.join(os.environ.get("CUTLASS_DIR", "/nonexistent"), "include"), "third_party/cutlass/include"]:
    if os.path.exists(os.path.join(c, "cute/tensor.hpp")):
        print(c); sys.exit()
import cutlass_library
print(os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include"))
EOF
)"
  gencode=()
  IFS=';' read -ra archs <<<"${SPARSE_ATTN_CUDA_ARCHS:-80;90a}"
  for a in "${archs[@]}"; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
  mkdir -p "$OUT/ptxas_objs"
  : >"$OUT/ptxas_source.log"
  for f in csrc/cuda/*.cu csrc/cuda/prefill/*.cu csrc/cuda/decode/*.cu csrc/cuda/paged/*.cu; do
    nvcc -c -std=c++17 -O3 --expt-relaxed-constexpr -Xptxas=-v,-warn-spills,-warn-lmem-usage \
      -lineinfo "${gencode[@]}" -Icsrc/include -I"$cutlass_inc" "$f" \
      -o "$OUT/ptxas_objs/$(basename "$(dirname "$f")")_$(basename "$f").o" >>"$OUT/ptxas_source.log" 2>&1
  done
fi
run_step ptxas ptxas_report.txt "$PY" tools/ptxas_report.py --json "$OUT/ptxas.json" "$OUT/ptxas_source.log"
case $? in
  0) record ptxas PASS ;;
  1) record ptxas FAIL "spills / local memory, see ptxas_report.txt" ;;
  *) record ptxas FAIL "no ptxas statistics" ;;
esac

# ---------------------------------------------------------------- host checks (CPU)
if [[ -x csrc/cuda/host_checks/run.sh ]]; then
  if run_step host_checks host_checks.log csrc/cuda/host_checks/run.sh; then
    record host_checks PASS
  else
    record host_checks FAIL "see host_checks.log"
  fi
else
  record host_checks SKIP "no csrc/cuda/host_checks/run.sh"
fi

# ---------------------------------------------------------------- GPU tests
run_step pytest_cuda pytest_cuda.log "$PY" -m pytest -q -m cuda tests/ \
  --junitxml="$OUT/pytest_cuda.xml"
rc=$?; record pytest_cuda "$(pytest_status $rc)" "exit $rc"

# ---------------------------------------------------------------- compute-sanitizer
SANITIZER="$(command -v compute-sanitizer || true)"
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  [[ -z "$SANITIZER" && -n "$d" && -x "$d/bin/compute-sanitizer" ]] && SANITIZER="$d/bin/compute-sanitizer"
done
if [[ -z "$SANITIZER" ]]; then
  record memcheck SKIP "compute-sanitizer not found"
  record racecheck SKIP "compute-sanitizer not found"
else
  for tool in memcheck racecheck; do
    # No caching allocator: memcheck then sees each tensor's own bounds.
    run_step "$tool" "sanitizer_$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$SANITIZER" --tool "$tool" --error-exitcode 99 \
      "$PY" -m pytest -q -m cuda -x tests/ -k smoke
    rc=$?
    case $rc in
      0) record "$tool" PASS ;;
      5) record "$tool" WARN "no smoke tests collected" ;;
      99) record "$tool" FAIL "sanitizer errors, see sanitizer_$tool.log" ;;
      *) record "$tool" FAIL "exit $rc, see sanitizer_$tool.log" ;;
    esac
  done
fi

# ---------------------------------------------------------------- decode: fallback merge, synccheck
run_step decode_separate decode_separate.log env SPARSE_ATTN_DECODE_MERGE=separate \
  "$PY" -m pytest -q -m cuda tests/test_cuda_decode.py
rc=$?; record decode_separate "$(pytest_status $rc)" "exit $rc"
if [[ -n "$SANITIZER" ]]; then
  run_step synccheck sanitizer_synccheck.log env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER" --tool synccheck --error-exitcode 99 "$PY" -m pytest -q -m cuda -x tests/test_cuda_decode.py -k smoke
  rc=$?
  case $rc in 0) record synccheck PASS ;; *) record synccheck FAIL "exit $rc, see sanitizer_synccheck.log" ;; esac
else
  record synccheck SKIP "compute-sanitizer not found"
fi

# ---------------------------------------------------------------- CUDA prefill benchmark
# bench/gpu_prefill.py: the CUDA engine (block-sparse, streaming, vertical-slash) vs SDPA (flash
# backend) and flex_attention, 8k..128k.
run_step gpu_prefill gpu_prefill.log env PYTHONPATH="$ROOT" "$PY" bench/gpu_prefill.py ${GPU_BENCH_ARGS:-} --out "$OUT"
rc=$?
if [[ $rc == 0 ]]; then record gpu_prefill PASS; else record gpu_prefill FAIL "exit $rc, see gpu_prefill.log"; fi

# ---------------------------------------------------------------- CUDA decode benchmark
# bench/gpu_decode.py: dense paged and Quest decode vs SDPA, batch 1..64, contexts 8k..512k.
run_step gpu_decode gpu_decode.log env PYTHONPATH="$ROOT" "$PY" bench/gpu_decode.py ${GPU_BENCH_ARGS:-} --out "$OUT"
rc=$?
if [[ $rc == 0 ]]; then record gpu_decode PASS; else record gpu_decode FAIL "exit $rc, see gpu_decode.log"; fi

# ---------------------------------------------------------------- benchmarks
# The suite has no CUDA cases yet (the attention kernels are CPU-only so far); once the
# CUDA engine exists, its cases join this same command.
run_step bench bench.log "$PY" -m sparse_attn.benchmark --quick --out "$OUT"
rc=$?
if [[ $rc == 0 ]]; then record bench PASS; else record bench FAIL "exit $rc, see bench.log"; fi

# ---------------------------------------------------------------- summary
echo
echo "===== gpu_check summary ($OUT)"
for i in "${!STEPS[@]}"; do printf '  %-14s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}"; done
if [[ $FAILED != 0 ]]; then echo "gpu_check: FAILED"; exit 1; fi
echo "gpu_check: OK"
