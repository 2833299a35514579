#!/usr/bin/env bash
# Build and run the CPU-side CuTe checks of csrc/cuda (no GPU needed): host code only,
# compiled by the same nvcc and CUTLASS headers as the CUDA engine. Exits non-zero on failure.
#   csrc/cuda/host_checks/run.sh            # CUTLASS from $CUTLASS_DIR, third_party/, or pip
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
NVCC="${NVCC:-nvcc}"
if [[ -n "${CUTLASS_DIR:-}" && -f "$CUTLASS_DIR/include/cute/tensor.hpp" ]]; then
  cutlass_inc="$CUTLASS_DIR/include"
elif [[ -f "$root/third_party/cutlass/include/cute/tensor.hpp" ]]; then
  cutlass_inc="$root/third_party/cutlass/include"
else
  cutlass_inc="$(${PYTHON:-python} -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include"))' 2>/dev/null || true)"
fi
if [[ ! -f "$cutlass_inc/cute/tensor.hpp" ]]; then
  echo "run.sh: CUTLASS include dir not found (set CUTLASS_DIR)" >&2
  exit 2
fi
if [[ -n "${HOST_CHECKS_BUILD:-}" ]]; then  # keep the binaries there
  out="$HOST_CHECKS_BUILD"; mkdir -p "$out"
else
  out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
fi
status=0
for src in "$here"/*.cu; do
  name="$(basename "$src" .cu)"
  echo "== $name"
  # -x cu: nvcc front end (CUTE_HOST_DEVICE etc.), but only host code is generated and run.
  flags=(-x cu -std=c++17 --expt-relaxed-constexpr -O1 -I"$root/csrc/include" -I"$cutlass_inc"
         -Xcompiler -Wall)
  # AddressSanitizer/UBSan catch a simulated out-of-bounds read or write (SANITIZE=0: off).
  # (nvcc splits -Xcompiler values on commas, hence one flag per -Xcompiler.)
  san=(-Xcompiler -fsanitize=address -Xcompiler -fsanitize=undefined
       -Xcompiler -fno-sanitize-recover=all -Xcompiler -fno-omit-frame-pointer)
  if [[ "${SANITIZE:-1}" == 1 ]] && "$NVCC" "${flags[@]}" "${san[@]}" "$src" -o "$out/$name" 2>"$out/$name.san.log"; then
    echo "(built with ASan+UBSan)"
  elif ! "$NVCC" "${flags[@]}" "$src" -o "$out/$name"; then
    echo "$name: COMPILE FAILED"; status=1; continue
  fi
  "$out/$name" || { echo "$name: FAILED"; status=1; }
done
exit $status
