#!/usr/bin/env bash
# torchrun.sh NPROC NNODES ARGS... : torchrun (python -m torch.distributed.run) with NPROC processes on this
# node, then ARGS (e.g. -m local.bin.sft key=value ...).  Started once per node (srun --ntasks-per-node 1).
#   one node:  a standalone rendezvous on a free local port, so that jobs side by side never collide;
#   several:   a c10d rendezvous at the first node of the Slurm allocation (at the address Slurm reaches
#              it by, its NodeAddr), the job id naming it.
set -euo pipefail
nproc=$1 nnodes=$2
shift 2
if [ "${nnodes}" -eq 1 ]; then
  exec python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "${nproc}" "$@"
fi
if [ -z "${SLURM_JOB_NODELIST:-}" ]; then
  echo "$0: ${nnodes} nodes need a Slurm allocation to find each other (no SLURM_JOB_NODELIST)" >&2
  exit 1
fi
head=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
addr=$(scontrol show node "${head}" -o | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
exec python -m torch.distributed.run --nnodes "${nnodes}" --nproc_per_node "${nproc}" --rdzv_backend c10d \
  --rdzv_endpoint "${addr:-${head}}:${EMOREASON_RDZV_PORT:-29500}" --rdzv_id "${SLURM_JOB_ID}" "$@"
