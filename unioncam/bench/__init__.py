"""``unioncam bench``: latency of explanations as users measure it (trtexec-style), with each cell in
its own process, per-stage percentiles, and the ratio to the machine's measured GEMM ceiling.

Torch-free: a bench of exported folders runs on the base install.
"""
from .stats import summarize

__all__ = ["summarize"]
