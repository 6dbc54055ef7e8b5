"""Where every benchmark writes its JSON and plots.

``bench/results`` by default; ``BENCH_RESULTS_DIR`` points the benchmarks elsewhere, which
is how ``bench/report.py --quick`` keeps CI-sized runs from overwriting the committed
figures. (Not an ``EDGECLOUD_*`` name: those are the SDK's settings.)
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "BENCH_RESULTS_DIR"
RESULTS = Path(os.environ.get(ENV) or Path(__file__).resolve().parent / "results")
