#!/usr/bin/env bash
# One launcher for every backend (cmd.sh picks one):
#   launch.sh [--backend local|slurm] [--gpu N] [--mem M] [--time T] [--partition P] LOG COMMAND...
# Runs COMMAND, shows its output and keeps it in LOG, and exits with COMMAND's status.
# local: runs here (--gpu only sets CUDA_VISIBLE_DEVICES when unset).  slurm: one srun job.
set -euo pipefail

backend=local   # local | slurm
gpu=0           # GPUs the job needs
mem=""          # memory, e.g. 16G (slurm)
time=""         # time limit, e.g. 24:00:00 (slurm)
partition=""    # partition (slurm)
. "$(dirname "${BASH_SOURCE[0]}")/parse_options.sh"

if [ $# -lt 2 ]; then
  echo "usage: $0 [options] LOG COMMAND..." >&2
  exit 1
fi
logfile=$1; shift
mkdir -p "$(dirname "${logfile}")"
echo "# $(date '+%Y-%m-%dT%H:%M:%S') $(printf '%q ' "$@")" > "${logfile}"

# Run "$@" with its output on the terminal and in the log; keep its own exit status.
run_logged() {
  set +e
  "$@" 2>&1 | tee -a "${logfile}"
  status=${PIPESTATUS[0]}
  set -e
}

case "${backend}" in
  local)
    if [ "${gpu}" -gt 0 ] && [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
      CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpu - 1)))
      export CUDA_VISIBLE_DEVICES
    fi
    run_logged "$@"
    ;;
  slurm)
    opts=(--job-name "$(basename "${logfile}" .log)" --ntasks 1)
    [ "${gpu}" -gt 0 ] && opts+=(--gres "gpu:${gpu}")
    [ -n "${mem}" ] && opts+=(--mem "${mem}")
    [ -n "${time}" ] && opts+=(--time "${time}")
    [ -n "${partition}" ] && opts+=(--partition "${partition}")
    run_logged srun "${opts[@]}" "$@"
    ;;
  *)
    echo "$0: unknown backend '${backend}'" >&2
    exit 1
    ;;
esac
[ "${status}" -eq 0 ] || echo "$0: command failed with status ${status}; see ${logfile}" >&2
exit "${status}"
