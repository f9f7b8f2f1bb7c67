#!/bin/bash
# W1 (tunelab's side) and the quickstart's train time at two commits, alternating, in one run, with
# this checkout's venv:  bench/compare_commits.sh OLD_REV [NEW_REV]   (NEW_REV default HEAD); REPS=N for N repetitions (default 2);
# ONLY=quickstart skips W1 (more repetitions of the shorter command in the same time)
# Each commit is checked out as a worktree beside this checkout (../tunelab-at-REV, so ../shared is
# found as the benchmarks expect); results: bench/results/compare-OLD-NEW.json
set -euo pipefail
case "${ONLY:-}" in "" | quickstart) ;; *) echo "ONLY=$ONLY: the one choice is ONLY=quickstart" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
OLD=$(git -C "$ROOT" rev-parse --short "$1"); NEW=$(git -C "$ROOT" rev-parse --short "${2:-HEAD}")
OUT=$ROOT/bench/results/compare-$OLD-$NEW${ONLY:+-$ONLY}.json
declare -A TREE
for rev in "$OLD" "$NEW"; do
  TREE[$rev]=$(dirname "$ROOT")/tunelab-at-$rev
  [ -d "${TREE[$rev]}" ] || git -C "$ROOT" worktree add -q --detach "${TREE[$rev]}" "$rev"
done
records=()
for rep in $(seq 1 "${REPS:-2}"); do
  for rev in "$OLD" "$NEW"; do
    t=${TREE[$rev]}
    # `python -m tunelab` needs tunelab/__main__.py, which older commits lack
    mod=tunelab; [ -f "$t/src/tunelab/__main__.py" ] || mod=tunelab.cli.main
    load=$(cut -d' ' -f1 /proc/loadavg)
    w1=null
    if [ "${ONLY:-}" != quickstart ]; then
      (cd "$t" && PYTHONPATH=$t/src "$PY" bench/run_bench.py w1 --reps 1 --skip-reference > /dev/null)
      w1=$("$PY" -c "import json,sys; m=json.load(open(sys.argv[1]))['medians']; print(json.dumps({k: v['tunelab'] for k, v in m.items()}))" "$t/bench/results/w1-noref.json")
    fi
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
"$PY" - "$OUT" <<'PY'
import json, statistics, sys
recs = json.load(open(sys.argv[1]))
for rev in dict.fromkeys(r["commit"] for r in recs):
    mine = [r for r in recs if r["commit"] == rev]
    qs = statistics.median(r["quickstart"]["train_command_s"] for r in mine)
    w1 = [r["w1"]["end_to_end_s"] for r in mine if r["w1"]]
    print(f"{rev}: quickstart train command median {qs:.1f} s" + (f", W1 end to end median {statistics.median(w1):.1f} s" if w1 else ""))
PY
