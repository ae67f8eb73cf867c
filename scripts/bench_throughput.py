#!/usr/bin/env python
"""Training-throughput benchmark: glubench (Lightning and a plain loop) vs Hugging Face peers.

Same as the ``glubench-bench`` console script; see ``python scripts/bench_throughput.py --help``
and BENCHMARKS.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from glubench.cli.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
