#!/usr/bin/env bash
# The GPU checks of issue 15 on a lent device machine, from the kit `python tools/devkit.py build`
# wrote here (.devkit/, git-ignored, carried: run(command=..., carry=[".devkit"])).
#
#   tools/device_check.sh doctor      # `benchmark doctor` (<= 8 min on an H100) -> $OUT/doctor.{txt,json}
#   tools/device_check.sh benchmark   # uns_positive.yaml on the rebuilt layout -> $OUT/uns-positive.md
#   tools/device_check.sh doctor benchmark
#
# BENCH_ARGS adds options to the benchmark stage's `benchmark run` (a rehearsal on a CPU box:
# BENCH_ARGS="--set image_size=32 --set epochs=1 --set precision=32 --set gpu_cache=false").
#
# One stage per call (run's timeout_s=600): doctor is bounded at DOCTOR_TIMEOUT_S=530 s (no check
# starts after DOCTOR_BUDGET_S, by default 90 s less, the time its slowest check takes), the benchmark at BENCH_TIMEOUT_S=480 s (each then killed 15 s
# after its SIGTERM, should a C call ignore it), after about half a minute of unpacking and layout on
# the first call. Each stage writes what it printed to $OUT, so a stage killed at its bound still
# reports (`benchmark doctor --show doctor.json` prints the table of what was measured).
# A session's 15 device minutes hold one machine start and the doctor call, not a second full stage:
# size BENCH_TIMEOUT_S (and BENCH_ARGS' epochs) to what is left.
# Before any of that, in seconds: the kit's Python against python3 here, and an import of every
# package the stages load, so a kit that cannot work costs no minutes of GPU time.
# The packages and the layout go to /tmp once: a later call on the same warm machine reuses them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_out}
KIT=.devkit
SITE=/tmp/nerve-bench-site  # not under .devkit: carrying .devkit again replaces that folder
mkdir -p "$OUT"

if [ ! -d "$KIT/wheels" ]; then
    echo "device_check: no $KIT here: run 'python tools/devkit.py build' and carry .devkit" >&2
    exit 2
fi
want=$(cat "$KIT/python.txt" 2>/dev/null)
have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$want" != "$have" ]; then
    echo "device_check: the kit is for Python ${want:-unknown}, python3 here is $have: rebuild it with --python-version $have" >&2
    exit 2
fi
if [ ! -f "$SITE/.complete" ]; then
    rm -rf "$SITE"  # a call killed while installing: pip --target skips what is there, half-written or not
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$KIT"/wheels/*.whl \
        && python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
            "$KIT/ray.tar.xz" "$SITE" && touch "$SITE/.complete" || exit 2  # no xz binary needed
fi
export PYTHONPATH="$PWD:$SITE" PYTHONUNBUFFERED=1
# No network there, and none may be tried (the CLI sets these too; Ray reads its own at import).
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline RAY_USAGE_STATS_ENABLED=0

python3 -c 'import segmentation_models_pytorch, albumentations, ray, lightning, benchmark.cli, models; models.list_models()' \
    || { echo "device_check: the kit's packages do not import here (above)" >&2; exit 2; }

# Real frames for both stages. The doctor's own synthetic layout is LZW-compressed and so would need
# imagecodecs, which the kit leaves behind; uns-positive rebuilt uncompressed serves it as well.
DATA=/tmp/uns-positive
if [ ! -f $DATA.complete ]; then  # built aside and renamed: a call killed halfway leaves no partial layout
    rm -rf $DATA $DATA.part
    python3 tools/devkit.py layout --out $DATA.part && mv $DATA.part $DATA && touch $DATA.complete || exit 2
fi

status=0
for stage in "$@"; do
    case $stage in
        doctor)
            nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
            # No check starts that would end after 440 s at the pace so far, so the table comes
            # before the hard limit; the JSON is rewritten after every check, so even a kill at
            # 530 s leaves what was measured.
            timeout -k 15 "${DOCTOR_TIMEOUT_S:-530}" python3 -m benchmark doctor --data-dir $DATA \
                --budget-s "${DOCTOR_BUDGET_S:-$(( ${DOCTOR_TIMEOUT_S:-530} - 90 ))}" --json "$OUT/doctor.json" 2>&1 \
                | tee "$OUT/doctor.txt"
            code=${PIPESTATUS[0]}  # 1: a check failed; 3: --budget-s left checks out; 124 or 137: the timeout
            [ "$code" = 0 ] || status=$code
            ;;
        benchmark)
            timeout -k 15 "${BENCH_TIMEOUT_S:-480}" python3 -m benchmark run --config benchmark/configs/uns_positive.yaml \
                --data-dir $DATA --results-dir /tmp/uns-positive-results --set logger=csv \
                ${BENCH_ARGS:-} 2>&1 | tee "$OUT/uns-positive.txt" || status=1
            cp /tmp/uns-positive-results/leaderboard.md "$OUT/uns-positive.md" 2>/dev/null || status=1
            ;;
        *)
            echo "device_check: unknown stage '$stage' (doctor, benchmark)" >&2
            exit 2
            ;;
    esac
done
exit $status
