#!/usr/bin/env bash
# The GPU benchmark in one device call: install the carried wheels, start Triton on
# model_repo/ with GPU instances, and measure the model, Triton and training, writing
# JSON under $OUT. Locally, `bench/gpu/run.sh --cpu` runs the same steps on the CPU.
#
#   bench/gpu/prepare.sh                      # here, once: wheels into .gpu/wheels
#   device run: bash bench/gpu/run.sh         # carry [".gpu"]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-gpu}
OUT=${OUT:-$PWD/bench/out}
SECONDS_PER=${BENCH_SECONDS:-5}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

if [ "$MODE" = "--cpu" ]; then
  PY=.venv/bin/python
  SITE=$($PY -c "import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent.parent)")
  KIND=KIND_CPU
  DEVICE=cpu
else
  PY=python3
  SITE=$WORK/site
  $PY -m pip install -q --no-index --no-deps --target "$SITE" .gpu/wheels/*.whl
  KIND=KIND_GPU
  DEVICE=cuda
fi
export PYTHONPATH=$PWD:$SITE:${PYTHONPATH:-}
S=$SITE/pytriton/tritonserver
PYVER=$($PY -c "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')")
mkdir -p "$WORK/be/python"
cp -r "$S/backends/python/." "$WORK/be/python/"
cp "$S/python_backend_stubs/$PYVER/triton_python_backend_stub" "$WORK/be/python/"
cp -r model_repo "$WORK/model_repo"
sed -i "s/KIND_CPU/$KIND/" "$WORK"/model_repo/*/config.pbtxt
export LD_LIBRARY_PATH=$($PY -c "import sysconfig;print(sysconfig.get_config_var('LIBDIR'))"):$SITE/nvidia_pytriton.libs:${LD_LIBRARY_PATH:-}
export TILESIGHT_SITE_PACKAGES=$PWD:$SITE:$($PY -c "import site;print(':'.join(site.getsitepackages()))")

"$S/bin/tritonserver" --model-repository="$WORK/model_repo" --backend-directory="$WORK/be" \
  --http-port 18000 --grpc-port 18001 --metrics-port 18002 --model-control-mode=explicit \
  --load-model=buildings --strict-readiness=false --exit-timeout-secs=2 > "$OUT/triton.log" 2>&1 &
for _ in $(seq 120); do curl -sf localhost:18000/v2/models/buildings/ready && break; sleep 1; done

$PY bench/gpu/model_throughput.py --device $DEVICE --seconds "$SECONDS_PER" --out "$OUT/model.json"
$PY bench/gpu/triton_throughput.py --url 127.0.0.1:18001 --seconds "$SECONDS_PER" \
  --out "$OUT/triton.json"
# training samples/s (bench/train.py picks CUDA when there is one), demo width and a wider one
$PY bench/train.py --threads "$(nproc)" --steps 20 --batch-size 32 --cache "$WORK/chips" \
  > "$OUT/train.txt" 2>&1 || echo "training bench failed: see $OUT/train.txt"
$PY bench/train.py --threads "$(nproc)" --steps 20 --batch-size 32 --width 32 --cache "$WORK/chips" \
  >> "$OUT/train.txt" 2>&1 || true
$PY -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}))" > "$OUT/device.json"
echo "results in $OUT"
