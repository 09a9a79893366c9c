"""``python -m unioncam.bench.ceiling``: the sgemm ceiling, measured in a process of its own."""
import json

from .machine import sgemm_gflops

if __name__ == "__main__":
    print(json.dumps({"gflops_per_s": sgemm_gflops()}))
