#!/usr/bin/env bash
# Makes onnxruntime-gpu travel to the lent GPU machine (no registry there, at most 64 MiB per
# transfer): run HERE, on a machine with the registry. Recipe of shared/notes/gpu-device.md.
#
#   bash benchmarks/gpu/ort_gpu_pieces.sh        # -> .whl/ortgpu.tar.zst.part-{aa,ab,ac}, .whl/zstandard-*.whl
#
# Then carry one piece per device call (`carry: [".whl/ortgpu.tar.zst.part-aa"]`, with a command that
# copies it to /tmp/parts/), and finally `bash benchmarks/gpu/run.sh runtime`, which unpacks them.
set -euo pipefail
version=${ORT_GPU_VERSION:-1.31.1}   # built for CUDA 13, as the machine's torch (cu130)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p .whl
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  -d "$work" "onnxruntime-gpu==$version"
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl zstandard
mkdir "$work/site"
python3 -m zipfile -e "$work"/onnxruntime_gpu-*.whl "$work/site"
# Python loads neither the C library nor the TensorRT provider (no TensorRT there); the FP16
# converter (onnxruntime/transformers) stays.
rm -f "$work"/site/onnxruntime/capi/libonnxruntime.so.1.* "$work"/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
python3 - "$work/site" "$work/ortgpu.tar.zst" <<'PY'
import sys, tarfile, zstandard
src, dst = sys.argv[1:]
with open(dst, "wb") as f, zstandard.ZstdCompressor(level=19).stream_writer(f, write_size=1 << 20) as z, \
        tarfile.open(fileobj=z, mode="w|") as tar:
    tar.add(src, arcname=".")
PY
split -n 3 "$work/ortgpu.tar.zst" .whl/ortgpu.tar.zst.part-
ls -l .whl/ortgpu.tar.zst.part-* .whl/zstandard-*.whl
