#!/usr/bin/env bash
# Peptides-func: several configs x seeds trained at once on one GPU (host-bound runs at batch 16
# share it well), each run re-sized to end by a deadline. Two steps, for a device lent in calls of
# at most ~10 minutes (the runs are started with setsid and outlive the first call):
#
#   DEADLINE=1100 bash benchmarks/peptides_seeds.sh start   # start, measure 3 epochs, re-size
#   bash benchmarks/peptides_seeds.sh wait                    # later calls: wait, then report
#
# `start` launches every RUNS entry with the config's full schedule (train.epochs, e.g. 300),
# waits until each has finished 3 epochs (the first holds the Triton compilation; all 3 are
# inside the 5 warm-up epochs, whose learning rate does not depend on the schedule's length),
# stops them (last.pt holds the last finished epoch) and resumes each with the
# schedule length that its measured pace fits into the DEADLINE seconds counted from the start
# (`peptides_parts.py fit`): the cosine then ends inside the time. Every run prints the test AP
# (MAE for Peptides-struct) of its best-validation weights at its end; `wait` returns when all
# have (or after MAX_S) and prints `peptides_parts.py report` for every run.
#
# The runs import a snapshot of the tree (OUTDIR/src, installed from there): a later device
# call copies the working tree over the repository while they run.
#
# Environment: RUNS ("name:config:seed[:key=value,key=value] ...": per-run overrides after the
# seed, e.g. "gmn_deg_s0:peptides_func_gmnplus:0:model.global_order=degree"; default GCN+ and
# the Graph Mamba on GCN+ blocks, seeds 0-2), DATA (folder holding graphs/peptides-functional; default ./shared/data), CACHE
# (the compact .npz; default .devdata/peptides/peptides_func.npz), OUTDIR (default /tmp/pep),
# DEADLINE (s), MAX_S (s of one wait, default 560), MPS (1: start CUDA MPS so the runs' kernels
# share the GPU, default 1; checked with one CUDA call, off again if that fails), EXTRA.
#
# A full schedule over several device sessions: FULL names runs kept on their config's own
# schedule (e.g. 300 epochs; not re-sized). `wait` stops them at the DEADLINE (last.pt holds
# the last finished epoch) and packs each into PACK/NAME.tar (default $OUT or
# OUTDIR/pack): its folder with last.pt, best.pt without the optimizer state, metrics and log.
# A later session passes FROM=folder holding those tars (carried to the device): the runs unpack
# and resume where they stopped (as they do without FROM when their folder is still in OUTDIR), and print the test AP (or MAE) of their best-validation weights when
# their schedule ends. A full-schedule run whose process ends before the DEADLINE (finished,
# or died: it resumes from its last.pt) is packed then, and `wait` returns once all have.
set -o pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
RUNS=${RUNS:-"gcn_s0:peptides_func_gcnplus:0 gcn_s1:peptides_func_gcnplus:1 gcn_s2:peptides_func_gcnplus:2 gmn_s0:peptides_func_gmnplus:0 gmn_s1:peptides_func_gmnplus:1 gmn_s2:peptides_func_gmnplus:2"}
DATA=${DATA:-$PWD/shared/data}; CACHE=${CACHE:-$PWD/.devdata/peptides/peptides_func.npz}
# nproc obeys OMP_NUM_THREADS (1 above): count the cores this process may use without it.
OUTDIR=${OUTDIR:-/tmp/pep}; NCPU=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
HERE=$(dirname "$0")
mkdir -p "$OUTDIR"
export TRITON_CACHE_DIR=$OUTDIR/triton

launch() {  # launch NAME CONFIG SEED SLOT EPOCHS RESUME [OVERRIDES]: the cores after 0-3 shared
  # out evenly (at least two per run: the trainer's process and its loader workers; fewer runs
  # get more cores, e.g. four each for three runs on 16 cores)
  local width lo
  width=$(( (NCPU - 4) / $(wc -w <<<"$RUNS") )); [ "$width" -lt 2 ] && width=2
  lo=$(( ($4 * width + 4) % NCPU ))
  setsid nohup taskset -c "$lo-$(( lo + width - 1 ))" geossm train "$OUTDIR/src/configs/graph/$2.yaml" \
    output_dir="$OUTDIR/$1" data.root="$DATA/graphs/peptides-functional" data.cache="$CACHE" \
    seed="$3" train.epochs="$5" train.num_workers="$width" train.progress=false resume="$6" \
    ${7//,/ } ${EXTRA:-} \
    >>"$OUTDIR/$1.log" 2>&1 </dev/null &
  echo $! >"$OUTDIR/$1.pid"
  echo "$1 config=$2 seed=$3 cores=$lo-$(( lo + width - 1 )) epochs=$5 resume=$6 pid=$!"
}

is_full() { [[ " ${FULL:-} " == *" $1 "* ]]; }

config_epochs() {
  python3 -c "import yaml; print(yaml.safe_load(open('$OUTDIR/src/configs/graph/$1.yaml'))['train']['epochs'])"
}

stop() {  # stop NAME...: SIGTERM, then wait for the exit (<= 60 s). Not SIGINT: a background job
  # starts with SIGINT ignored. A checkpoint is written to a temporary file and renamed, so
  # last.pt holds the last finished epoch whenever the run stops.
  local name pid t
  for name in "$@"; do kill -TERM "$(cat "$OUTDIR/$name.pid")" 2>/dev/null; done
  for name in "$@"; do
    pid=$(cat "$OUTDIR/$name.pid"); t=$SECONDS
    while kill -0 "$pid" 2>/dev/null && [ $(( SECONDS - t )) -lt 60 ]; do sleep 1; done
    kill -KILL "$pid" 2>/dev/null
  done
}

pack() {  # pack NAME...: PACK/NAME.tar with the run folder (best.pt stripped) and its log
  local dest=${PACK:-${OUT:-$OUTDIR/pack}} name
  mkdir -p "$dest"
  for name in "$@"; do
    python3 "$HERE/peptides_parts.py" strip "$OUTDIR/$name/best.pt" "$OUTDIR/$name/best.pt.tmp" \
      && mv "$OUTDIR/$name/best.pt.tmp" "$OUTDIR/$name/best.pt"
    tar -cf "$dest/$name.tar" -C "$OUTDIR" --exclude=tb "$name" "$name.log"
    ls -la "$dest/$name.tar"
  done
}

snapshot() {  # the code the runs import: a copy of the tree, installed (editable) from there.
  # A later device call copies the working tree over the repository while the runs still
  # import modules lazily (one run died of a half-copied package so); a running process keeps
  # the paths it started with when the repository is installed again.
  local snap=$OUTDIR/src
  rm -rf "$snap" && mkdir -p "$snap" || return 1
  tar -c --exclude=./.git --exclude=./.devdata --exclude=./.whl --exclude=./.peer \
    --exclude=./shared . | tar -x -C "$snap" || return 1
  (cd "$snap" && python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    >"$snap/.pip.txt" 2>&1) || { cat "$snap/.pip.txt"; return 1; }
  echo "runs import the snapshot $snap"
}

start() {
  : "${DEADLINE:?DEADLINE: seconds from now by which every run must end}"
  local t0 slot=0 name cfg seed over resume fitted=()
  t0=$(date +%s); echo "t0=$t0 deadline=$(( t0 + DEADLINE ))" | tee "$OUTDIR/deadline.txt"
  snapshot || { echo "snapshot failed" >&2; return 1; }
  if [ "${MPS:-1}" = 1 ] && nvidia-cuda-mps-control -d 2>/dev/null; then
    if timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
      echo "MPS on"
    else echo quit | nvidia-cuda-mps-control; echo "MPS off (the check failed)"; fi
  fi
  for run in $RUNS; do
    IFS=: read -r name cfg seed over <<<"$run"
    resume=false
    if is_full "$name"; then  # from a tar of an earlier session, or stopped earlier here
      [ -n "${FROM:-}" ] && [ -f "$FROM/$name.tar" ] && tar -xf "$FROM/$name.tar" -C "$OUTDIR"
      [ -f "$OUTDIR/$name/last.pt" ] && resume=true
    fi
    is_full "$name" || fitted+=("$name")
    launch "$name" "$cfg" "$seed" "$slot" "$(config_epochs "$cfg")" "$resume" "$over"
    slot=$(( slot + 1 ))
  done
  [ "${#fitted[@]}" -eq 0 ] && return
  while [ $(( $(date +%s) - t0 )) -lt 300 ]; do  # every re-sized run: 3 epochs (or 300 s)
    local done_n=0
    for name in "${fitted[@]}"; do
      grep -q "epoch 3 val:" "$OUTDIR/$name.log" 2>/dev/null && done_n=$(( done_n + 1 ))
    done
    [ "$done_n" -ge "${#fitted[@]}" ] && break
    sleep 5
  done
  stop "${fitted[@]}"
  slot=0
  for run in $RUNS; do
    IFS=: read -r name cfg seed over <<<"$run"
    if ! is_full "$name"; then
      local epochs
      if epochs=$(python3 "$HERE/peptides_parts.py" fit "$OUTDIR/$name.log" \
                  $(( t0 + DEADLINE - $(date +%s) ))); then
        launch "$name" "$cfg" "$seed" "$slot" "$epochs" true "$over"
      else echo "$name: not resumed"; fi
    fi
    slot=$(( slot + 1 ))
  done
}

wait_runs() {
  local t=$SECONDS deadline name cfg seed over fitted=() full=() done_n
  deadline=$(sed -n 's/.*deadline=\([0-9]*\).*/\1/p' "$OUTDIR/deadline.txt")
  for run in $RUNS; do
    IFS=: read -r name cfg seed over <<<"$run"
    if is_full "$name"; then full+=("$name"); else fitted+=("$name"); fi
  done
  while [ $(( SECONDS - t )) -lt "${MAX_S:-560}" ]; do
    if [ "${#full[@]}" -gt 0 ] && [ "$(date +%s)" -ge "$deadline" ]; then
      stop "${full[@]}"; pack "${full[@]}"; full=()
    fi
    local running=()  # a full-schedule run whose process is gone (ended with its test line,
    for name in "${full[@]}"; do  # or died: its last.pt resumes) is packed now, so the wait
      if ! kill -0 "$(cat "$OUTDIR/$name.pid")" 2>/dev/null; then  # ends when all have
        grep -q "test: weights=best" "$OUTDIR/$name.log" 2>/dev/null \
          || echo "$name: its process is gone before the end of its schedule (see its log)"
        pack "$name"
      else running+=("$name"); fi
    done
    full=("${running[@]}")
    done_n=0
    for name in "${fitted[@]}"; do
      grep -q "test: weights=best" "$OUTDIR/$name.log" 2>/dev/null && done_n=$(( done_n + 1 ))
    done
    [ "$done_n" -ge "${#fitted[@]}" ] && [ "${#full[@]}" -eq 0 ] && break
    sleep 5
  done
  cat "$OUTDIR/deadline.txt"; echo "now $(date +%s)"
  python3 "$HERE/peptides_parts.py" report "$OUTDIR"/*.log
}

case "${1:-}" in
  start) start ;;
  wait) wait_runs ;;
  *) echo "usage: DEADLINE=S bash $0 start | bash $0 wait" >&2; exit 2 ;;
esac
