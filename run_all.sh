#!/usr/bin/env bash
# Regenerates every table and figure in RESULTS.md from scratch. Finished runs (with a
# result.json) are skipped, so an interrupted run_all.sh picks up where it stopped.
#   JOBS=2 bash run_all.sh     # two runs at a time (one thread each)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-1}
SEEDS=${SEEDS:-"0 1 2 3 4"}
mkdir -p runs

# Issue 2 / Figure 2: scalar latent on synthetic data, no annealing, basic vs aggressive.
jobs=()
for mode in aggressive basic; do
  for seed in $SEEDS; do
    out=runs/synthetic-nz1-$mode-s$seed
    [ -f "$out/result.json" ] && continue
    flag=""; [ "$mode" = aggressive ] && flag="--aggressive"
    jobs+=("OMP_NUM_THREADS=1 $PY lagvae.py train --data synthetic --preset synthetic --nz 1 $flag --seed $seed --out $out --quiet > $out.log 2>&1")
  done
done
if [ ${#jobs[@]} -gt 0 ]; then
  printf '%s\0' "${jobs[@]}" | xargs -0 -P "$JOBS" -I{} bash -c '{}'
fi
$PY lagvae.py table runs/synthetic-nz1-* | tee runs/table_synthetic_nz1.md
