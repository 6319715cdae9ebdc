#!/usr/bin/env bash
# One launcher for every backend (cmd.sh picks one):
#   launch.sh [--backend local|slurm] [--gpu N] [--cpus C] [--num_nodes M] [--job K] LOG COMMAND...
# Runs COMMAND, shows its output and keeps it in LOG, and exits with COMMAND's status; a failure names LOG.
#   local: runs here.  --gpu N gives it N of the visible GPUs (CUDA_VISIBLE_DEVICES): the K-th N of them
#          for --job K, so that the decoding jobs of run.sh --ngpu N each get their own.
#   slurm: one srun job step (an allocation of its own when run outside one) with --gres gpu:N,
#          --cpus-per-task C, --nodes M with one task per node, and the options of its kind (--kind cpu|gpu)
#          from --config (conf/slurm.conf: partition, memory, time).  srun waits for the job, so the stage
#          ends when the job does and its log lands in LOG.
set -euo pipefail

backend=local   # local | slurm
gpu=0           # GPUs the job needs (per node)
cpus=1          # CPU cores the job needs (per node)
num_nodes=1     # nodes (slurm; one task per node, e.g. torchrun)
job=1           # which of several jobs this is (local: picks its GPUs)
kind=cpu        # slurm: the line of --config whose options the job gets (cpu | gpu)
config=""       # slurm: the options of each kind, e.g. conf/slurm.conf
. "$(dirname "${BASH_SOURCE[0]}")/parse_options.sh"

if [ $# -lt 2 ]; then
  echo "usage: $0 [options] LOG COMMAND..." >&2
  exit 1
fi
logfile=$1; shift
mkdir -p "$(dirname "${logfile}")"

# Run "$@" with its output on the terminal and in the log (its first line: the command, as run); keep
# its own exit status.
run_logged() {
  echo "# $(date '+%Y-%m-%dT%H:%M:%S') $(printf '%q ' "$@")" > "${logfile}"
  set +e
  "$@" 2>&1 | tee -a "${logfile}"
  status=${PIPESTATUS[0]}
  set -e
}

case "${backend}" in
  local)
    if [ "${gpu}" -gt 0 ]; then
      IFS=, read -r -a visible <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((gpu * job - 1)))}"
      first=$(( (job - 1) * gpu ))
      if [ $((first + gpu)) -gt ${#visible[@]} ]; then
        echo "$0: job ${job} needs GPUs $((first + 1))-$((first + gpu)), and ${#visible[@]} are visible" >&2
        exit 1
      fi
      CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${visible[*]:first:gpu}")
      export CUDA_VISIBLE_DEVICES
    fi
    run_logged "$@"
    ;;
  slurm)
    opts=(--job-name "$(basename "${logfile}" .log)" --nodes "${num_nodes}" --ntasks-per-node 1
          --cpus-per-task "${cpus}")
    [ "${gpu}" -gt 0 ] && opts+=(--gres "gpu:${gpu}")
    if [ -n "${config}" ]; then
      [ -f "${config}" ] || { echo "$0: no Slurm config ${config}" >&2; exit 1; }
      line=$(sed -n "s/^${kind}:[[:space:]]*//p" "${config}")
      # shellcheck disable=SC2206  # the line is a list of srun options
      opts+=(${line})
    fi
    run_logged srun "${opts[@]}" "$@"
    ;;
  *)
    echo "$0: unknown backend '${backend}'" >&2
    exit 1
    ;;
esac
[ "${status}" -eq 0 ] || echo "$0: command failed with status ${status}; see ${logfile}" >&2
exit "${status}"
