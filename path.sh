# Sourced by run.sh and the recipes: the environment every stage runs in.
MAIN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export MAIN_ROOT
if [ -f "${MAIN_ROOT}/tools/venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "${MAIN_ROOT}/tools/venv/bin/activate"
fi
export PYTHONPATH=${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}
# Stages parallelise over processes (--nj); one BLAS thread each avoids oversubscription.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export WANDB_MODE=${WANDB_MODE:-offline}
export PYTHONUNBUFFERED=1
export LC_ALL=C
export PYTHONUTF8=1
