#!/usr/bin/env bash
# The Python packages a bare GPU machine lacks for geossm, in two steps, from the repository root:
#
#   bash benchmarks/device_env.sh download .whl    # here (package registry reachable): wheels
#                                                  # (the folder defaults to .whl)
#   source benchmarks/device_env.sh .whl           # there (no network), at the start of a call
#
# The GPU image already has torch, triton, torch-geometric, numba, tqdm, tensorboard, scipy,
# PyYAML, pytest and hypothesis; it lacks OmegaConf (the configs) and its parser runtime antlr4
# 4.9, which PyPI has only as a source archive, so `download` builds its (pure-Python) wheel
# here. Sourcing installs the folder's wheels into /tmp/site (put on PYTHONPATH), installs
# geossm editable without dependencies and prints the versions and the card; name the folder
# (the caller's own arguments would stand in for a missing one). `.whl` is in .gitignore and
# must travel with the device call.
# The mamba_ssm peer of `scan_gpu.py --mamba-ssm-path` is plain Python + Triton: its
# `mamba_ssm` folder from state-spaces/mamba (e9594ce in the NOTES) copied into an ignored
# folder that travels with the call (its CUDA extension is not built there).

_geossm_device_env_download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d "$1" omegaconf==2.3.0 || return 1
  python3 -m pip wheel -q --no-deps -w "$1" antlr4-python3-runtime==4.9.3 || return 1
  ls -l "$1"
}

_geossm_device_env_install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$1"/*.whl > /tmp/device_env_wheels.log 2>&1 \
    || { cat /tmp/device_env_wheels.log >&2; return 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/device_env_geossm.log 2>&1 \
    || { tail -20 /tmp/device_env_geossm.log >&2; return 1; }
  # from another folder: the repository root's ./geossm would shadow the editable install's
  # mapping, which also provides geossm.kernels / serialization / tasks
  (cd /tmp && python3 -c "import geossm, geossm.kernels, omegaconf, torch, triton; print('geossm', geossm.__file__, '| torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')")
}

# $1: "sourced" or "run"; then the caller's arguments. Returns the status to leave with.
_geossm_device_env() {
  local how=$1
  shift
  if [ ! -f pyproject.toml ] || [ ! -d kernels/selective_scan_triton ]; then
    echo "device_env: run it from the geossm repository root (here: $PWD)" >&2
    return 2
  fi
  if [ "${1:-}" = "download" ]; then
    if [ "$how" = sourced ]; then
      echo "device_env: download with 'bash benchmarks/device_env.sh download DIR'" >&2
      return 2
    fi
    _geossm_device_env_download "${2:-.whl}"
    return
  fi
  if [ "$how" = run ]; then
    echo "device_env: source it ('source benchmarks/device_env.sh DIR'), so that PYTHONPATH" \
         "stays set, or run 'bash benchmarks/device_env.sh download DIR'" >&2
    return 2
  fi
  if [ -z "${1:-}" ] || ! ls "$1"/*.whl > /dev/null 2>&1; then
    echo "device_env: no wheels in '${1:-}' (name the folder; make it with:" \
         "bash benchmarks/device_env.sh download DIR)" >&2
    return 1
  fi
  _geossm_device_env_install "$1"
}

if (return 0 2> /dev/null); then
  _geossm_device_env sourced "$@"
  _geossm_device_env_status=$?
  unset -f _geossm_device_env _geossm_device_env_download _geossm_device_env_install
  # the status of `source`, without leaving a variable behind
  eval "unset _geossm_device_env_status; return $_geossm_device_env_status"
else
  _geossm_device_env run "$@"
  exit $?
fi
