"""``python -m sparse_attn.benchmark [--quick] [--op prefill] ...`` == ``sparse-attn bench ...``."""
import sys

from sparse_attn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
