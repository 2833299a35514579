#!/usr/bin/env bash
# sparse_attn.hf's fallback for transformers without AttentionInterface, checked on
# transformers 4.47.1 in a throwaway venv that reuses this environment's torch and the
# in-place build (run from the repository root after `python setup.py build_ext --inplace`).
set -euo pipefail
OUT_DIR=$(mktemp -d); export OUT_DIR
python -m venv --system-site-packages "$OUT_DIR/venv"
"$OUT_DIR/venv/bin/pip" install -q "transformers==4.47.1"
PYTHONPATH=$PWD "$OUT_DIR/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_hf_fallback.py
PYTHONPATH=$PWD python tools/hf_fallback_crosscheck.py save
PYTHONPATH=$PWD "$OUT_DIR/venv/bin/python" tools/hf_fallback_crosscheck.py load
