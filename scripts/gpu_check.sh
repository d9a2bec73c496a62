#!/usr/bin/env bash
# GPU readiness check (at most ~8 minutes on one GPU): CUDA against CPU, the NCCL engine, and GPU timings.
#
#   bash scripts/gpu_check.sh            # on a machine with CUDA; PY defaults to .venv/bin/python, else python3
#   DEVICE=cpu bash scripts/gpu_check.sh # dry run of every step on the CPU (gloo instead of NCCL)
#
# Steps:
#   1. scripts/gpu_check.py: HaloConv3d, the diffusion stencil, Jacobi-CG, MgNO and FNO on CUDA vs CPU (float64),
#      CG time per iteration 32^3-256^3 and HaloConv3d throughput on the GPU;
#   2. the same script under torchrun with the NCCL engine (one rank per GPU: NCCL refuses two ranks on one GPU);
#   3. the distributed halo/layer test files with the torch engine under torchrun (gloo on CPU tensors).
# Results: benchmarks/results/gpu_check.json (and copied to $OUT when that is set, as on the device machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
NGPU=$($PY -c "import torch; print(max(1, torch.cuda.device_count()) if '$DEVICE' == 'cuda' else 2)")
step() { echo "== $* ($(date +%T))"; }
status=0
step "1. CUDA vs CPU, single process"
timeout 300 $PY scripts/gpu_check.py --device "$DEVICE" || status=1
step "2. torch.distributed engine, $NGPU rank(s), device $DEVICE"
timeout 120 $PY -m torch.distributed.run --standalone --nproc-per-node "$NGPU" scripts/gpu_check.py --nccl --device "$DEVICE" || status=1
step "3. distributed test files with the torch engine under torchrun (2 ranks)"
DEEPKRYLOV_TEST_BACKEND=gloo timeout 120 $PY -m torch.distributed.run --standalone --nproc-per-node 2 -m pytest -q -x \
    -p no:cacheprovider tests/distributed/test_halo.py tests/distributed/test_layers.py || status=1
if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu_check.json "$OUT/" || true; fi
step "done, status $status"
exit $status
