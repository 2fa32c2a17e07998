#!/usr/bin/env bash
# The CUDA test suite in one go on one GPU: one pytest process per test file, all started at
# once (the kernel files compile their own Triton variants, so in order they take ~15 min; side
# by side ~5 min on an H100, bound by the longest file), each capped at CAP seconds. Prints one
# line per file (its pytest summary, or "TIMED OUT" / "NO SUMMARY") and the totals; exits 1 if
# any file failed, errored, timed out (alone too, below) or printed no summary. The logs stay
# in LOGS. A file that runs past CAP beside the others (their Triton compilations share the
# host's cores) is run again alone once the others are done, capped at RETRY_CAP; its line then
# says both, and the alone run's result counts.
#
#   bash benchmarks/gpu_tests.sh                       # the default files below
#   FILES="tests/kernels/test_selective_scan.py" CAP=300 bash benchmarks/gpu_tests.sh
#
# Env: FILES (test files, relative to the repository root or absolute; default every
# tests/kernels/test_*.py and the layer / engine / sparse files that hold CUDA cases), CAP
# (seconds per file, default 540), LOGS (default a new temporary folder), PY (default python3),
# PYTEST_ARGS (more pytest arguments), RETRY_CAP (seconds of the alone run of a file that timed
# out beside the others, default CAP; 0: no such run).
set -u
cd "$(dirname "$0")/.." || exit 2   # the repository root: the default FILES are relative to it
DEFAULT_FILES="$(ls tests/kernels/test_*.py) tests/geossm/test_packed.py
tests/geossm/nn/test_packed_mixer.py tests/geossm/nn/test_packed_graphs.py
tests/geossm/nn/test_stacked_weights.py tests/geossm/engine/test_optim.py
tests/geossm/engine/test_cuda_graph.py tests/tasks/detection/test_sparse.py"
FILES=${FILES:-$DEFAULT_FILES}
given=($FILES)   # the files, split on any white space
if [ "${#given[@]}" -eq 0 ]; then
  echo "no test files in FILES" >&2
  exit 2
fi
CAP=${CAP:-540}
RETRY_CAP=${RETRY_CAP:-$CAP}
LOGS=${LOGS:-$(mktemp -d)}
PY=${PY:-python3}
mkdir -p "$LOGS"

pids=()
names=()
files=()
for file in "${given[@]}"; do
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
  files+=("$file")
done

# summary LOG RC CAP: the file's line from its pytest log and exit code
summary() {
  # pytest's last line: "== 109 passed, 2 skipped, 1 warning in 100.55s (0:01:40) =="
  local line
  line=$(grep -E '(passed|failed|error|skipped|no tests ran)' "$1" | tail -1 | tr -d '=')
  if [ "$2" -eq 124 ]; then
    echo "TIMED OUT after $3 s (${line:-no summary})"
  elif [ -z "$line" ]; then
    echo "NO SUMMARY (exit $2)"
  else
    echo "$line"
  fi
}

status=0
declare -A total=()
count() {  # add one file's counts to the totals
  local kind n
  for kind in passed failed skipped error errors; do
    n=$(echo "$1" | grep -oE "[0-9]+ $kind\b" | grep -oE '^[0-9]+' || true)
    total[$kind]=$(( ${total[$kind]:-0} + ${n:-0} ))
  done
}

retry=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  rc=$?
  line=$(summary "$LOGS/${names[$i]}.log" "$rc" "$CAP")
  if [ "$rc" -eq 124 ] && [ "$RETRY_CAP" -gt 0 ] && [ "${#pids[@]}" -gt 1 ]; then
    retry+=("$i")   # its counts come from the alone run below
    printf '%-55s %s; run again alone below\n' "${names[$i]}" "$line"
    continue
  fi
  printf '%-55s %s\n' "${names[$i]}" "$line"
  [ "$rc" -ne 0 ] && status=1
  count "$line"
done

# ${a[@]+...}: an empty array is an unbound variable under set -u before bash 4.4
for i in ${retry[@]+"${retry[@]}"}; do
  log="$LOGS/${names[$i]}.alone.log"
  timeout "$RETRY_CAP" "$PY" -m pytest -q -rs -p no:cacheprovider ${PYTEST_ARGS:-} \
    "${files[$i]}" > "$log" 2>&1
  rc=$?
  line=$(summary "$log" "$rc" "$RETRY_CAP")
  printf '%-55s %s\n' "${names[$i]}" "alone (timed out after $CAP s beside the others): $line"
  [ "$rc" -ne 0 ] && status=1
  count "$line"
done
echo "total: ${total[passed]} passed, ${total[failed]} failed, ${total[skipped]} skipped," \
  "$(( ${total[error]} + ${total[errors]} )) errors; logs in $LOGS"
exit $status
