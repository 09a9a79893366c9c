"""``python -m unioncam.bench.ceiling [THREADS]``: the GEMM ceiling, measured in a process of its own
(one JSON line: :func:`unioncam.bench.machine.gemm_rates`)."""
import json
import sys

from .machine import gemm_rates

if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "all" else None
    print(json.dumps(gemm_rates(threads=threads)))
