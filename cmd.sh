# How stages are launched: on this machine or through Slurm, behind one interface.
#   ${train_cmd} LOG COMMAND...   (tools/launch.sh documents the options)
# Pick the backend with `cmd_backend=slurm ./run.sh ...` or edit the default here.
cmd_backend=${cmd_backend:-local}

case "${cmd_backend}" in
  local)
    export train_cmd="${MAIN_ROOT}/tools/launch.sh --backend local"
    export cuda_cmd="${MAIN_ROOT}/tools/launch.sh --backend local"
    export decode_cmd="${MAIN_ROOT}/tools/launch.sh --backend local"
    ;;
  slurm)
    # Edit partitions and resources for your cluster.
    export train_cmd="${MAIN_ROOT}/tools/launch.sh --backend slurm --partition cpu --mem 16G"
    export cuda_cmd="${MAIN_ROOT}/tools/launch.sh --backend slurm --partition gpu --gpu 1 --mem 64G"
    export decode_cmd="${MAIN_ROOT}/tools/launch.sh --backend slurm --partition gpu --gpu 1 --mem 32G"
    ;;
  *)
    echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (local | slurm)" >&2
    return 1
    ;;
esac
