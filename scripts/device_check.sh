#!/usr/bin/env bash
# The checks that need a GPU, in one short run (under 5 minutes on one GPU):
#   1-2. the throughput benchmark on the GPU, float32 and mixed_float16;
#   3.   the structural test that the training loop never syncs with the host per step;
#   4.   a mirrored training run on that GPU;
# then one summary table. Run from anywhere:  bash scripts/device_check.sh
# (uses .venv/bin/python if it exists, else python3; set PYTHON to choose).
# Without a GPU it runs the same checks, shortened, on the CPU and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export TF_CPP_MIN_LOG_LEVEL=3
OUT="$(mktemp -d)"
GPUS="$("$PY" -c 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))' 2>/dev/null)"
if [ "${GPUS:-0}" -gt 0 ]; then
  DEVICE="$("$PY" -c 'import tensorflow as tf; g = tf.config.list_physical_devices("GPU")[0]; print(tf.config.experimental.get_device_details(g).get("device_name", g.name))' 2>/dev/null)"
  BENCH=(--model=large --steps=1000 --repetitions=2)
  MIRRORED=(--strategy=mirrored)
else
  DEVICE="no GPU: CPU only, shortened (these are not GPU figures)"
  BENCH=(--model=small --quick)
  MIRRORED=(--strategy=mirrored --num_cpu_devices=2)
  echo "device_check: no GPU found; running the checks on the CPU, shortened."
fi

status() { [ "$1" -eq 0 ] && echo ok || echo "FAILED (exit $1)"; }

for precision in float32 mixed_float16; do
  "$PY" scripts/benchmark.py --nolarge_vocab --precision="$precision" "${BENCH[@]}" \
      > "$OUT/bench_$precision.txt" 2> "$OUT/bench_$precision.err"
  echo "$?" > "$OUT/bench_$precision.rc"
  cat "$OUT/bench_$precision.txt"
done
# setup.cfg already gives -q: a second one (-qq) would drop the "N passed" line.
"$PY" -m pytest -p no:cacheprovider tests/test_loop_structure.py > "$OUT/structure.txt" 2>&1
STRUCTURE=$?
"$PY" scripts/train.py --model_dir="$OUT/mirrored" --train_steps=300 --steps_per_loop=100 \
    --eval_every=0 --experiment_params=num_train_examples=4096 "${MIRRORED[@]}" > "$OUT/mirrored.txt" 2>&1
MIRRORED_RC=$?

echo
echo "device check on: $DEVICE"
printf '%-44s %-12s %s\n' "check" "status" "figures"
printf '%-44s %-12s %s\n' "--------------------------------------------" "------------" "-------"
for precision in float32 mixed_float16; do
  rc="$(cat "$OUT/bench_$precision.rc")"
  engine="$(awk '$1 == "engine" {print $2}' "$OUT/bench_$precision.txt" | head -1)"
  bare="$(awk '$1 == "bare_loop" {print $2}' "$OUT/bench_$precision.txt" | head -1)"
  fit="$(awk '$1 == "fit_spe50" {print $2}' "$OUT/bench_$precision.txt" | head -1)"
  bare10="$(awk '$1 == "bare_loop10" {print $2}' "$OUT/bench_$precision.txt" | head -1)"
  printf '%-44s %-12s %s\n' "benchmark $precision (steps/s)" "$(status "$rc")" \
      "engine ${engine:-?}, fit_spe50 ${fit:-?}, bare_loop ${bare:-?}, bare_loop10 ${bare10:-?}"
  grep '^target' "$OUT/bench_$precision.txt" | sed 's/^target /    /'
done
printf '%-44s %-12s %s\n' "no host sync per step (tests/test_loop_structure.py)" "$(status "$STRUCTURE")" \
    "$(grep -oE '[0-9]+ (passed|failed).*' "$OUT/structure.txt" | tail -1)"
printf '%-44s %-12s %s\n' "mirrored training run (300 steps)" "$(status "$MIRRORED_RC")" \
    "$(grep -oE 'train \| step 300/300 .*' "$OUT/mirrored.txt" | tail -1)"
echo "logs: $OUT"
[ "$STRUCTURE" -eq 0 ] && [ "$MIRRORED_RC" -eq 0 ] && \
  [ "$(cat "$OUT/bench_float32.rc")" -eq 0 ] && [ "$(cat "$OUT/bench_mixed_float16.rc")" -eq 0 ]
