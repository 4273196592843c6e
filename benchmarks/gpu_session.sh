#!/usr/bin/env bash
# One prepared session on a lent GPU machine (no network, no Ray installed, ~10 minutes):
#
#   0. feed (~2 minutes, torch only): benchmarks/train_feed.py, the
#      training loop's epoch-average rate against its steady rate and pure compute, ResNet-18
#      and -50 at 112 px, the set in host memory against in GPU memory, with GPU utilization;
#   1. benchmarks/gpu_step.py: the evaluator's step (mask-then-recognize, the attack) per
#      architecture, precision and batch, torch only;
#   2. the whole method at 112 px on Ray with a GPU in every stage: configs/faces112.yaml
#      on an exported image folder, Ray Train workers on the GPU (--gpus-per-worker 1,
#      NCCL), evaluation actors sharing it (--eval-gpus), the attackers' Tune trials too;
#   3. Serve on the GPU: benchmarks/serve_probe.py deploys that run with --gpus 1 per
#      replica, checks an answer and drives it (one image per request, and 16), then 1, 2 and 4
#      replicas sharing the GPU (one image per request: images/s per node);
#   4. the capacity job at its default size (100,000 masks at 112 px): generation, read-back,
#      Table 1 and the race's first round on 10 faces per mask (1M masked images), against
#      the bare forward on the same GPU share.
#
# Ray's wheel is larger than what travels to that machine, so it travels stripped (no Java
# jar, RLlib, LLM or dashboard front end, none of which maskcrypt uses) as wheels in .whl/,
# with the dependencies that machine lacks (Serve's FastAPI/uvicorn/gRPC set included): `python benchmarks/gpu_wheels.py` makes
# them here (it needs PyPI). Then, from the repository root on the GPU machine:
#
#   OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh        # extra flags go to `maskcrypt run`
#
# All five stages take ~14 minutes, more than one 10-minute call: choose with STAGES, e.g.
# STAGES="feed step run" then STAGES="serve capacity" on the still-warm machine (serve uses the run).
#
# Every stage is time-boxed so that one hang cannot eat the lease; logs land in $OUT.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STAGES=" ${STAGES:-feed step run serve capacity} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
STEP_LIMIT=${STEP_LIMIT:-150}
RUN_LIMIT=${RUN_LIMIT:-480}

if ! python3 -c "import ray" 2>/dev/null && [ ! -d /tmp/site/ray ]; then  # installed once per machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
[ -d /tmp/site/ray ] && export PYTHONPATH=/tmp/site
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi -L
python3 -c "import torch, ray, pyarrow, numpy; print('torch', torch.__version__, 'ray', ray.__version__, \
'pyarrow', pyarrow.__version__, 'numpy', numpy.__version__, 'bf16', torch.cuda.is_bf16_supported())"
nproc

if want step; then
  echo "== gpu_step"
  timeout "$STEP_LIMIT" python3 benchmarks/gpu_step.py --steps 10 2>&1 | tee "$OUT/gpu_step.txt"
fi

if want feed; then  # torch only (no Ray needed): the training loop's epoch rate against steady and pure compute
  echo "== train_feed"
  timeout "${FEED_LIMIT:-180}" python3 benchmarks/train_feed.py 2>&1 | tee "$OUT/train_feed.txt"
fi

if want run; then
  echo "== the method at 112 px on Ray, GPUs in every stage"
  t0=$(date +%s)
  python3 -m maskcrypt data export "synthetic:size=112,per_identity=30#split=all" --out /tmp/faces112-data 2>&1 | tail -2
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 > "$OUT/gpu_util.csv" 2>&1 &
  smi=$!
  timeout "$RUN_LIMIT" python3 -m maskcrypt run --config configs/faces112.yaml --run /tmp/faces112 \
    --data imagefolder:/tmp/faces112-data --workers 1 --gpus-per-worker 1 --eval-actors 4 --eval-gpus 0.25 \
    --attack-gpus 0.25 --attack-cpus 2 "$@" 2>&1 | tee "$OUT/run.txt"
  rc=${PIPESTATUS[0]}
  kill $smi 2>/dev/null
  echo "run exit $rc after $(( $(date +%s) - t0 )) s"
  for f in report.md run.json; do [ -f "/tmp/faces112/$f" ] && cp "/tmp/faces112/$f" "$OUT/"; done
  if [ "$rc" -ne 0 ]; then
    tail -n 40 /tmp/ray/session_latest/logs/*.err /tmp/ray/session_latest/logs/worker*.out 2>/dev/null \
      | tail -n 400 > "$OUT/ray_logs_tail.txt"
  fi
fi

if want serve && [ -f /tmp/faces112/targets.json ]; then
  echo "== Serve on the GPU: one replica with --gpus 1, the run's target masks"
  timeout "${SERVE_LIMIT:-240}" python3 benchmarks/serve_probe.py /tmp/faces112 --gpus 1 --replicas 1,2,4 2>&1 | tee "$OUT/serve.txt"
fi

if want capacity; then
  echo "== capacity: 100,000 masks at 112 px, Table 1 and one race round on the GPU"
  timeout "${CAPACITY_LIMIT:-300}" python3 -m maskcrypt capacity --count 100000 --size 112 --max-rounds 1 --first 10 \
    --eval-actors 4 --eval-gpus 0.25 --out /tmp/capacity 2>&1 | tee "$OUT/capacity.txt"
  [ -f /tmp/capacity/capacity.json ] && cp /tmp/capacity/capacity.json "$OUT/"
fi
exit 0
