#!/usr/bin/env bash
# Wall time of one benchmark grid with the local executor and with Ray, side by side in one session,
# each into a fresh results directory (nothing skipped), then the ratio local / ray.
#   tools/time_executors.sh [CONFIG] [extra `run` arguments, e.g. --data-dir /data/uns --set gpus_per_run=0.5]
# Default CONFIG: the smoke grid on its synthetic data. The Ray figure includes starting Ray and its
# workers (what a user waits for); set RAY_ADDRESS to time an existing cluster instead.
set -euo pipefail
CONFIG=${1:-benchmark/configs/smoke.yaml}
shift || true
PY=${PY:-.venv/bin/python}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/time-executors.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1
declare -A SECONDS_OF
for executor in local ray; do
  start=$(date +%s.%N)
  "$PY" -m benchmark run --config "$CONFIG" --results-dir "$OUT/$executor" --no-report \
    --executor "$executor" "$@" > "$OUT/$executor.log" 2>&1 \
    || { echo "$executor run failed; last lines:" >&2; tail -n 20 "$OUT/$executor.log" >&2; exit 1; }
  SECONDS_OF[$executor]=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { print a - b }')
  trained=$(grep -c "^done \|\] done " "$OUT/$executor.log" || true)
  printf '%-5s %7.1f s  (%s runs trained)\n' "$executor" "${SECONDS_OF[$executor]}" "$trained"
done
printf 'local / ray = %.2f\n' "$(awk -v a="${SECONDS_OF[local]}" -v b="${SECONDS_OF[ray]}" 'BEGIN { print a / b }')"
