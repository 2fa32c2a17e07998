#!/usr/bin/env bash
# The CUDA test suite in one go on one GPU: one pytest process per test file, all started at
# once (the kernel files compile their own Triton variants, so in order they take ~15 min; side
# by side ~5 min on an H100, bound by the longest file), each capped at CAP seconds. Prints one
# line per file (its pytest summary, or "TIMED OUT" / "NO SUMMARY") and the totals; exits 1 if
# any file failed, errored, timed out or printed no summary. The logs stay in LOGS.
#
#   bash benchmarks/gpu_tests.sh                       # the default files below
#   FILES="tests/kernels/test_selective_scan.py" CAP=300 bash benchmarks/gpu_tests.sh
#
# Env: FILES (test files, relative to the repository root or absolute; default every
# tests/kernels/test_*.py and the layer / engine / sparse files that hold CUDA cases), CAP
# (seconds per file, default 540), LOGS (default a new temporary folder), PY (default python3),
# PYTEST_ARGS (more pytest arguments).
set -u
cd "$(dirname "$0")/.." || exit 2   # the repository root: the default FILES are relative to it
DEFAULT_FILES="$(ls tests/kernels/test_*.py) tests/geossm/test_packed.py
tests/geossm/nn/test_packed_mixer.py tests/geossm/nn/test_packed_graphs.py
tests/geossm/nn/test_stacked_weights.py tests/geossm/engine/test_optim.py
tests/geossm/engine/test_cuda_graph.py tests/tasks/detection/test_sparse.py"
FILES=${FILES:-$DEFAULT_FILES}
CAP=${CAP:-540}
LOGS=${LOGS:-$(mktemp -d)}
PY=${PY:-python3}
mkdir -p "$LOGS"

pids=()
names=()
for file in $FILES; do
  if [ ! -f "$file" ]; then
    echo "missing test file: $file" >&2
    exit 2
  fi
  name=$(echo "$file" | tr '/' '_' | sed 's/\.py$//')
  # -p no:cacheprovider: the processes would race on .pytest_cache
  timeout "$CAP" "$PY" -m pytest -q -rs -p no:cacheprovider ${PYTEST_ARGS:-} "$file" \
    > "$LOGS/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
done

status=0
declare -A total=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  rc=$?
  log="$LOGS/${names[$i]}.log"
  # pytest's last line: "== 109 passed, 2 skipped, 1 warning in 100.55s (0:01:40) =="
  summary=$(grep -E '(passed|failed|error|skipped|no tests ran)' "$log" | tail -1 | tr -d '=')
  if [ "$rc" -eq 124 ]; then
    summary="TIMED OUT after ${CAP} s (${summary:-no summary})"
  elif [ -z "$summary" ]; then
    summary="NO SUMMARY (exit $rc)"
  fi
  printf '%-55s %s\n' "${names[$i]}" "$summary"
  [ "$rc" -ne 0 ] && status=1
  for kind in passed failed skipped error errors; do
    n=$(echo "$summary" | grep -oE "[0-9]+ $kind\b" | grep -oE '^[0-9]+' || true)
    total[$kind]=$(( ${total[$kind]:-0} + ${n:-0} ))
  done
done
echo "total: ${total[passed]} passed, ${total[failed]} failed, ${total[skipped]} skipped," \
  "$(( ${total[error]} + ${total[errors]} )) errors; logs in $LOGS"
exit $status
