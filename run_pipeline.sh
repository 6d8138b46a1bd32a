#!/usr/bin/env bash
# Stage 1 (prepare_data.py: a no-op when the cache is current), then stage 2 (train_model.py).
# Stops at the first failure with its exit code; each stage's output goes to the console and to
# outputs/logs/<stage>-<time>.log. Relative paths are read from the folder you run it in.
#
# Usage: run_pipeline.sh [--prepare-config FILE] [--train-config FILE] [--prepare-flag FLAG]... [--] [TRAIN FLAGS...]
#   --prepare-config FILE  YAML/JSON settings for prepare_data.py
#   --train-config FILE    YAML/JSON settings for train_model.py
#   --prepare-flag FLAG    one more argument for prepare_data.py (repeatable), e.g. --prepare-flag=--force
#   TRAIN FLAGS            passed to train_model.py as they are, e.g. --learning-rate 3e-4
# Several GPUs visible to torch: training runs one process per GPU (torchrun). SIGTERM (docker stop) is
# passed to the running stage: training saves a checkpoint and stops (exit 143).
# Environment: PYTHON (default: python), LOG_DIR (default: outputs/logs), S3 settings (or .env).
set -euo pipefail

usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
fail() { echo "run_pipeline.sh: $1" >&2; exit 2; }

prepare_args=()
train_args=()
while (($#)); do
  case "$1" in
    --prepare-config | --train-config | --prepare-flag)
      (($# >= 2)) || fail "$1 needs a value (see --help)"
      set -- "$1=$2" "${@:3}"
      continue
      ;;
    --prepare-config=*) prepare_args=("${1#*=}" "${prepare_args[@]}") ;;
    --train-config=*) train_args=("${1#*=}" "${train_args[@]}") ;;
    --prepare-flag=*) prepare_args+=("${1#*=}") ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1") ;;
  esac
  shift
done

here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
log_dir="${LOG_DIR:-outputs/logs}"
if ! mkdir -p "$log_dir" 2>/dev/null || [[ ! -w "$log_dir" ]]; then
  fail "cannot write $log_dir as uid $(id -u): create the folders as that user before the run (make up)"
fi
stamp="$(date +%Y%m%d-%H%M%S)"

child=""
forward() { [[ -z "$child" ]] || kill -TERM "$child" 2>/dev/null || true; }
trap forward TERM INT

run_stage() {
  local name="$1"; shift
  local log="$log_dir/$name-$stamp.log"
  echo "==> $name: $*" | tee "$log"
  "$@" > >(tee -a "$log") 2>&1 &
  child=$!
  local status=0
  wait "$child" || status=$?
  while kill -0 "$child" 2>/dev/null; do  # a signal ended the wait: the stage is still finishing
    status=0
    wait "$child" || status=$?
  done
  child=""
  if ((status != 0)); then
    echo "==> $name failed with exit code $status (log: $log)" | tee -a "$log" >&2
    exit "$status"
  fi
  echo "==> $name done (log: $log)"
}

train=("$python" "$here/train_model.py")
gpus=0
if [[ -e /dev/nvidiactl ]]; then  # an NVIDIA driver: count the GPUs torch sees (a MIG slice is one)
  gpus="$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
fi
if ((gpus > 1)); then
  train=("$python" -m torch.distributed.run --standalone --nproc-per-node "$gpus" "$here/train_model.py")
fi

run_stage prepare "$python" "$here/prepare_data.py" "${prepare_args[@]}"
run_stage train "${train[@]}" "${train_args[@]}"
