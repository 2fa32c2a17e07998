#!/usr/bin/env bash
# Peptides-func GMN (configs/graph/peptides_func_gmn.yaml) trained in time-limited parts on one
# GPU: each part trains for at most TRAIN_S seconds (a clean SIGINT stop; last.pt is written
# after every epoch), the next part resumes from the previous part's last.pt.
#
#   PART=1 EPOCHS=80 TRAIN_S=440 bash benchmarks/peptides_parts.sh
#   PART=2 PREV=.devdata/pep_b EPOCHS=auto TRAIN_S=440 bash benchmarks/peptides_parts.sh
#
# Environment:
#   CONFIG    the config trained, default configs/graph/peptides_func_gmn.yaml (also
#             configs/graph/peptides_func_gcnplus.yaml: the GCN+ yardstick)
#   DATA      folder holding graphs/peptides-functional (the shared data layout)
#   RESULT    output folder: train.log, metrics.jsonl, last.pt (full state), best.pt (weights),
#             eval_best.log (val and test of best.pt), part.json, triton_cache.tgz
#   PREV      folder with the previous part's RESULT files (parts > 1)
#   EPOCHS    length of the whole cosine schedule; "auto" (parts > 1): the epochs already done
#             plus as many as the previous parts' measured wall time per epoch lets fit into
#             TRAIN_S (the cosine then ends inside this part)
#   TRAIN_S   wall seconds of training in this part, default 440
#   BATCH, LR, WARMUP, EVAL_EVERY, EXTRA (more key=value overrides), CACHE (compact .npz)
#   SMOKE=1   a few hundred graphs on the CPU: checks the script, not the model
#   SKIP_EVAL=1  no separate evaluation of best.pt when the schedule did not finish
# A SIGINT that lands while DataLoader workers fork can be swallowed (Python's logging at-fork
# handler): timeout then kills the run 6 s later; last.pt is replaced atomically, so it stays
# the last finished epoch either way.
set -o pipefail
export PYTHONUNBUFFERED=1
T0=$(date +%s)
PART=${PART:-1}
CPUS=${CPUS:-$(python3 -c 'import os; s=sorted(os.sched_getaffinity(0)); print(f"{s[0]}-{s[-1]}")')}
NCPU=$(taskset -c "$CPUS" python3 -c 'import os; print(len(os.sched_getaffinity(0)))')
NW=$(( NCPU > 8 ? 6 : (NCPU > 4 ? 4 : 2) ))
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
TRAIN_S=${TRAIN_S:-440}
EPOCHS=${EPOCHS:-80}
BATCH=${BATCH:-256}
LR=${LR:-1.5e-3}
WARMUP=${WARMUP:-3}
EVAL_EVERY=${EVAL_EVERY:-1}
EXTRA=${EXTRA:-}
CACHE=${CACHE:-.devdata/peptides/peptides_func.npz}
RUN=${RUN:-/tmp/pep_run_part$PART}
: "${DATA:?DATA must name the shared data folder}" "${RESULT:?RESULT must name the output folder}"
mkdir -p "$RUN" "$RESULT"
export TRITON_CACHE_DIR="$RUN/triton_cache"
nvidia-smi -L > "$RESULT/card.txt" 2>&1 || echo "no nvidia-smi" > "$RESULT/card.txt"

if [ "$PART" != 1 ]; then
  : "${PREV:?PREV must name the folder of the previous results for PART > 1}"
  cp "$PREV/last.pt" "$PREV/metrics.jsonl" "$RUN/" || exit 2
  cp "$PREV/best.pt" "$RUN/best.pt" 2>/dev/null  # weights only: read by the final test
  [ -f "$PREV/triton_cache.tgz" ] && tar xzf "$PREV/triton_cache.tgz" -C "$RUN"
  if [ "$EPOCHS" = auto ]; then
    EPOCHS=$(python3 benchmarks/peptides_parts.py epochs "$PREV" "$TRAIN_S") || exit 3
  fi
fi
if [ "${SMOKE:-0}" = 1 ]; then
  EXTRA="+data.max_graphs=300 model.dim=16 model.num_layers=1 $EXTRA"
fi
echo "part=$PART cpus=$CPUS workers=$NW epochs=$EPOCHS batch=$BATCH lr=$LR train_s=$TRAIN_S" \
  | tee "$RESULT/job.txt"
CONFIG=${CONFIG:-configs/graph/peptides_func_gmn.yaml}
COMMON="$CONFIG output_dir=$RUN data.root=$DATA/graphs/peptides-functional \
data.cache=$CACHE train.num_workers=$NW train.progress=false train.batch_size=$BATCH \
train.lr=$LR train.warmup_epochs=$WARMUP train.epochs=$EPOCHS eval.every=$EVAL_EVERY $EXTRA"
RESUME=$([ "$PART" = 1 ] && echo false || echo true)
timeout -s INT -k 6 "$TRAIN_S" taskset -c "$CPUS" geossm train $COMMON resume=$RESUME 2>&1 \
  | tee "$RESULT/train$PART.log"
echo "train rc=$? at $(( $(date +%s) - T0 )) s" | tee -a "$RESULT/job.txt"
# Earlier parts' logs travel on, so part N+1 measures the epoch time over all parts.
[ "$PART" != 1 ] && cp "$PREV"/train[0-9]*.log "$RESULT/" 2>/dev/null
cp "$RUN/metrics.jsonl" "$RUN/last.pt" "$RESULT/"
python3 benchmarks/peptides_parts.py strip "$RUN/best.pt" "$RESULT/best.pt"
tar czf "$RUN/triton_cache.tgz" -C "$RUN" triton_cache 2>/dev/null \
  && [ "$(stat -c %s "$RUN/triton_cache.tgz")" -lt 2000000 ] && cp "$RUN/triton_cache.tgz" "$RESULT/"
if [ "${SKIP_EVAL:-0}" != 1 ] && ! grep -q "test: weights=" "$RESULT/train$PART.log"; then
  taskset -c "$CPUS" geossm eval $COMMON checkpoint="$RUN/best.pt" 2>&1 | tail -2 \
    | tee "$RESULT/eval_best.log"
fi
echo "end $(( $(date +%s) - T0 )) s" | tee -a "$RESULT/job.txt"
