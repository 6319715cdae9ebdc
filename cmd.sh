# How stages are launched: on this machine or through Slurm, behind one interface.
#   ${train_cmd} | ${cuda_cmd} | ${decode_cmd} [--gpu N] [--cpus C] [--num_nodes M] [--job K] LOG COMMAND...
#   ${data_job_cmd} LOG COMMAND...   (one of a data stage's --nj jobs; unset: they are processes of the stage)
# (tools/launch.sh documents the options; run.sh gives them from --ngpu, --nproc, --num_nodes and --nj).
# Pick the backend with `cmd_backend=slurm ./run.sh ...` or edit the default here; Slurm jobs take their
# partition, memory and time from conf/slurm.conf (the recipe's own when it has one).
cmd_backend=${cmd_backend:-local}

case "${cmd_backend}" in
  local)
    export train_cmd="${MAIN_ROOT}/tools/launch.sh --backend local"
    export cuda_cmd="${MAIN_ROOT}/tools/launch.sh --backend local"
    export decode_cmd="${MAIN_ROOT}/tools/launch.sh --backend local"
    export data_job_cmd=""  # the --nj jobs are processes of the stage
    ;;
  slurm)
    slurm_conf=${MAIN_ROOT}/conf/slurm.conf
    [ ! -f conf/slurm.conf ] || slurm_conf=$(pwd)/conf/slurm.conf
    export train_cmd="${MAIN_ROOT}/tools/launch.sh --backend slurm --config ${slurm_conf} --kind cpu"
    export cuda_cmd="${MAIN_ROOT}/tools/launch.sh --backend slurm --config ${slurm_conf} --kind gpu"
    export decode_cmd="${MAIN_ROOT}/tools/launch.sh --backend slurm --config ${slurm_conf} --kind gpu"
    # a data stage's --nj jobs, each a job of its own (ESPnet's JOB=1:nj); the stage itself runs where run.sh does
    export data_job_cmd="${train_cmd}"
    ;;
  *)
    echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (local | slurm)" >&2
    return 1
    ;;
esac
