#!/usr/bin/env bash
# The GPU rows of the graph results table: the heterophilous family (Tolokers, Chameleon- and
# Squirrel-filtered) on their 10 official splits, the GCN+ yardstick and the Graph Mamba config
# side by side, all at once on one GPU (one process per run, one CPU thread each). The Graph
# Mamba config runs as VARIANTS (JSON {name: [overrides]}; default: the config as it is,
# "hops_att", and GMN's random-walk tokens, "walks"), and so may the GCN+ yardstick (GCN_VARIANTS,
# default: the config as it is, "run"): the family's variant is then chosen on the validation
# accuracy of Chameleon + Squirrel (the "best" rows' "acc"), never on test:
#   python benchmarks/family_select.py ChameleonFiltered=$OUT/ChameleonFiltered.tolokers_gmn.jsonl \
#       SquirrelFiltered=$OUT/SquirrelFiltered.tolokers_gmn.jsonl Tolokers=$OUT/Tolokers.tolokers_gmn.jsonl \
#       --select-on ChameleonFiltered,SquirrelFiltered --reference hops_att
# (paired by split; a variant replaces the reference only beyond one standard error). Variants run
# split-major (every variant on split 0, then split 1, ...): a budget cut leaves them all on
# the same splits.
#
#   OUT=runs/table_gpu bash benchmarks/graph_table_gpu.sh      # then, for the chosen variant:
#   python benchmarks/graph_table.py $OUT/*/tolokers_gcnplus:"1x H200" \
#       $OUT/*/tolokers_gmn/CHOSEN:"1x H200" --readme README.md
#
# Env: OUT (run directories; default runs/table_gpu), DATA (default shared/data/graphs),
# JOBS (runs at once per Chameleon / Squirrel group, default 3; Tolokers: 4 GCN+, 8 GMN),
# BUDGET_S (no new run starts after it, default 170),
# PY (default python), SPLITS (default 0-9), DEVICE (default cuda), EXTRA (more overrides),
# DATASETS (default "Tolokers ChameleonFiltered SquirrelFiltered"). CPU smoke test:
#   DEVICE=cpu SPLITS=0 DATASETS=ChameleonFiltered EXTRA="train.epochs=2" JOBS=1 \
#       DATA=../shared/data/graphs PY=.venv/bin/python bash benchmarks/graph_table_gpu.sh
# The best-val test metrics are what graph_table.py reads back; every finished run also prints one JSON line ({"variant", "split", "seed", "best", "last", ...}).
set -u
OUT=${OUT:-runs/table_gpu}
DATA=${DATA:-shared/data/graphs}
JOBS=${JOBS:-3}
BUDGET_S=${BUDGET_S:-170}
PY=${PY:-python}
ONE=$(mktemp)
echo "${GCN_VARIANTS:-{\"run\": []\}}" > "$ONE"
GMN=$(mktemp)
echo "${VARIANTS:-{\"hops_att\": [], \"walks\": [\"model.token_source=walks\", \"model.readout=last\"]\}}" > "$GMN"
SPLITS=${SPLITS:-0-9}
DATASETS=${DATASETS:-Tolokers ChameleonFiltered SquirrelFiltered}
GPU="device=${DEVICE:-cuda} train.amp=false ${EXTRA:-}"

group() {  # group CONFIG NAME ROOT JOBS -> the 10 splits of CONFIG on dataset NAME
    local config=$1 name=$2 root=$3 jobs=$4 variants=$ONE
    [ "$config" = tolokers_gmn ] && variants=$GMN
    # The dense edge-list GCN is the faster one on the GPU (the sparse product: on the CPU).
    $PY benchmarks/graph_sweep.py "configs/graph/$config.yaml" --variants "$variants" --splits "$SPLITS" \
        --jobs "$jobs" --budget-s "$BUDGET_S" --split-major --out "$OUT/$name/$config" $GPU model.sparse_adjacency=false \
        data.name="$name" data.root="$DATA/$root" > "$OUT/$name.$config.jsonl" 2> "$OUT/$name.$config.err"
}

mkdir -p "$OUT"
for config in tolokers_gcnplus tolokers_gmn; do
    for name in $DATASETS; do
        if [ "$name" = Tolokers ]; then  # the long runs: more at once
            jobs=4; [ "$config" = tolokers_gmn ] && jobs=8
            group "$config" Tolokers heterophilous "$jobs" &
        else
            group "$config" "$name" heterophilous_extra "$JOBS" &
        fi
    done
done
wait
rm -f "$ONE" "$GMN"
grep -h '"split"' "$OUT"/*.jsonl | wc -l  # finished runs
