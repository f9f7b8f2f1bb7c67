#!/bin/bash
# W1 (tunelab's side) and the quickstart's train time at two commits, alternating, in one run, with
# this checkout's venv:  bench/compare_commits.sh OLD_REV [NEW_REV]   (NEW_REV default HEAD)
# Each commit is checked out as a worktree beside this checkout (../tunelab-at-REV, so ../shared is
# found as the benchmarks expect); results: bench/results/compare-OLD-NEW.json
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
OLD=$(git -C "$ROOT" rev-parse --short "$1"); NEW=$(git -C "$ROOT" rev-parse --short "${2:-HEAD}")
OUT=$ROOT/bench/results/compare-$OLD-$NEW.json
declare -A TREE
for rev in "$OLD" "$NEW"; do
  TREE[$rev]=$(dirname "$ROOT")/tunelab-at-$rev
  [ -d "${TREE[$rev]}" ] || git -C "$ROOT" worktree add -q --detach "${TREE[$rev]}" "$rev"
done
records=()
for rep in 1 2; do
  for rev in "$OLD" "$NEW"; do
    t=${TREE[$rev]}
    # `python -m tunelab` needs tunelab/__main__.py, which older commits lack
    mod=tunelab; [ -f "$t/src/tunelab/__main__.py" ] || mod=tunelab.cli.main
    load=$(cut -d' ' -f1 /proc/loadavg)
    (cd "$t" && PYTHONPATH=$t/src "$PY" bench/run_bench.py w1 --reps 1 --skip-reference > /dev/null)
    w1=$("$PY" -c "import json,sys; m=json.load(open(sys.argv[1]))['medians']; print(json.dumps({k: v['tunelab'] for k, v in m.items()}))" "$t/bench/results/w1-noref.json")
    scratch=$(mktemp -d)
    s=$(date +%s.%N)
    (cd "$t" && PYTHONPATH=$t/src "$PY" -m $mod train examples/quickstart.yaml "output.dir=$scratch" tracking.backend=none > /dev/null 2>&1)
    e=$(date +%s.%N)
    qs=$("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({'train_command_s': round(float(sys.argv[2]), 1), 'tokens_per_s': d['tokens_per_s'], 'exact_match_after': d['samples_exact_match_after']}))" "$scratch/quickstart/summary.json" "$(echo "$e - $s" | bc)")
    rm -rf "$scratch"
    records+=("{\"rep\": $rep, \"commit\": \"$rev\", \"load_avg_1m\": $load, \"w1\": $w1, \"quickstart\": $qs}")
    echo "rep $rep $rev: w1 $w1 quickstart $qs"
  done
done
printf '[%s]\n' "$(IFS=,; echo "${records[*]}")" | "$PY" -m json.tool > "$OUT"
echo "wrote $OUT"
