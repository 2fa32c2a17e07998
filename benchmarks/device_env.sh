#!/usr/bin/env bash
# The Python packages a bare GPU machine lacks for geossm, in two steps:
#
#   bash benchmarks/device_env.sh download [DIR]   # here (package registry reachable): wheels -> DIR
#   source benchmarks/device_env.sh [DIR]          # there (no network), at the start of a call
#
# The GPU image already has torch, triton, torch-geometric, numba, tqdm, tensorboard, scipy,
# pytest and hypothesis; it lacks OmegaConf (the configs) and its parser runtime antlr4 4.9,
# which PyPI has only as a source archive, so `download` builds its (pure-Python) wheel here.
# Sourcing installs DIR's wheels into /tmp/site (on PYTHONPATH), installs geossm editable
# without dependencies and prints the versions and the card. DIR defaults to .whl (ignored by
# git: add `/.whl/` to .git/info/exclude) and must travel with the call.
# The mamba_ssm peer of `scan_gpu.py --mamba-ssm-path` is plain Python + Triton: its
# `mamba_ssm` folder from state-spaces/mamba (e9594ce in the NOTES) copied into an ignored
# folder that travels with the call (its CUDA extension is not built there).
WHEELS_PINNED="omegaconf==2.3.0"
SOURCE_ONLY="antlr4-python3-runtime==4.9.3"

if [ "${1:-}" = "download" ]; then
  dir=${2:-.whl}
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d "$dir" $WHEELS_PINNED || exit 1
  python3 -m pip wheel -q --no-deps -w "$dir" $SOURCE_ONLY || exit 1
  ls -l "$dir"
  # `bash device_env.sh download` runs as a script: leave with its status
  exit 0
fi

_geossm_device_env() {
  local dir=${1:-.whl}
  if ! ls "$dir"/*.whl > /dev/null 2>&1; then
    echo "device_env: no wheels in $dir (make them with: bash benchmarks/device_env.sh download $dir)" >&2
    return 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$dir"/*.whl > /tmp/device_env_wheels.log 2>&1 \
    || { cat /tmp/device_env_wheels.log >&2; return 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/device_env_geossm.log 2>&1 \
    || { tail -20 /tmp/device_env_geossm.log >&2; return 1; }
  # from another folder, so that the installed package (not the source tree) is what imports
  (cd /tmp && python3 -c "import geossm, geossm.kernels, omegaconf, torch, triton; print('geossm', geossm.__file__, '| torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')")
}
_geossm_device_env "$@"
