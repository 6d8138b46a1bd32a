#!/usr/bin/env bash
# Stage 1 (prepare_data.py: a no-op when the cache is current), then stage 2 (train_model.py).
# Stops at the first failure with its exit code; each stage's output goes to the console and to
# outputs/logs/<stage>-<time>.log.
#
# Usage: run_pipeline.sh [--prepare-config FILE] [--train-config FILE] [--prepare-flag FLAG]... [--] [TRAIN FLAGS...]
#   --prepare-config FILE  YAML/JSON settings for prepare_data.py
#   --train-config FILE    YAML/JSON settings for train_model.py
#   --prepare-flag FLAG    one more argument for prepare_data.py (repeatable), e.g. --prepare-flag --force
#   TRAIN FLAGS            passed to train_model.py as they are, e.g. --learning-rate 3e-4
# Environment: PYTHON (default: python), LOG_DIR (default: outputs/logs), S3 settings (or .env).
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

prepare_args=()
train_args=()
while (($#)); do
  case "$1" in
    --prepare-config) prepare_args=("$2" "${prepare_args[@]}"); shift 2 ;;
    --train-config) train_args=("$2" "${train_args[@]}"); shift 2 ;;
    --prepare-flag) prepare_args+=("$2"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1"); shift ;;
  esac
done

cd "$(dirname "$0")"
python="${PYTHON:-python}"
log_dir="${LOG_DIR:-outputs/logs}"
mkdir -p "$log_dir"
stamp="$(date +%Y%m%d-%H%M%S)"

run_stage() {
  local name="$1"; shift
  local log="$log_dir/$name-$stamp.log"
  echo "==> $name: $*" | tee "$log"
  local status=0
  "$python" "$@" 2>&1 | tee -a "$log" || status=${PIPESTATUS[0]}
  if ((status != 0)); then
    echo "==> $name failed with exit code $status (log: $log)" | tee -a "$log" >&2
    exit "$status"
  fi
  echo "==> $name done (log: $log)"
}

run_stage prepare prepare_data.py "${prepare_args[@]}"
run_stage train train_model.py "${train_args[@]}"
