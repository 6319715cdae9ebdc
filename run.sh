#!/usr/bin/env bash
# EmoReason: the staged pipeline shared by every recipe (in the style of ESPnet's asr.sh).
#
#   ./run.sh                          # installs if needed, then runs egs/mini_lime end to end
#   ./run.sh --stop_stage 4           # data stages only
#   cd egs/<corpus> && ./run.sh --stage 2 --stop_stage 3 --attributes_args "attributes.pitch_backend=crepe"
#
# Called from the top of the repository it hands over to egs/<corpus>/run.sh, so
# the corpus' own options apply; that script calls this one back from the recipe
# dir, where data/, dump/ and exp/ live.
set -euo pipefail
# The whole script is one { ... } block: bash reads it all before running it, so editing run.sh
# while an experiment runs cannot change what that run does next.
{

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
main_root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ -z "${EMOREASON_RECIPE:-}" ]; then
  corpus=mini_lime
  args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --corpus) corpus=$2; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  if [ ! -x "${main_root}/egs/${corpus}/run.sh" ]; then
    echo "$0: no recipe egs/${corpus}/run.sh (see README, 'Adding a corpus')" >&2
    exit 1
  fi
  exec "${main_root}/egs/${corpus}/run.sh" ${args[@]+"${args[@]}"}
fi

# ---------------------------------------------------------------------------
# Options (each can be given as --name value; see tools/parse_options.sh)
# ---------------------------------------------------------------------------
stage=0               # first stage to run
stop_stage=10         # last stage to run
skip_stages=""        # stages to skip, e.g. "3 5"
force=false           # re-run stages even when their records say they are up to date
corpus=${EMOREASON_RECIPE}  # set by egs/<corpus>/run.sh
system=c2ser          # c2ser | cogaudio | ambiguity | reasoning
nj=2                  # parallel processes for the data stages, and baselines trained at once on CPU
ngpu=0                # GPUs per node for training and decoding; 0: every stage on the CPU
nproc=""              # processes per node of a training stage (torchrun) and decoding jobs; empty: --ngpu, or 1 on CPU
num_nodes=1           # nodes of a training stage (multi-node needs cmd_backend=slurm: srun + torchrun rendezvous)
python=python3        # the interpreter of tools/venv (path.sh puts it first on PATH)
train_set=train       # data/<train_set>: training data; attribute statistics come from it
dev_set=dev           # data/<dev_set>: validation data
test_sets="test"      # data/<set> for each test set, space separated
data_root=data        # where data dirs live (relative to the recipe dir)
dump_root=dump        # shards and caches
exp_root=exp          # models, decodes, results
baselines=auto        # ablations trained beside the system (conf/baseline/); auto: those of the system's paper
fold=""               # the corpus fold whose sets stage 0 writes (corpus.folds); empty: the corpus config's corpus.fold
folds=""              # "1 2 3 4 5" or all: run each fold in <root>/fold<k>/ and report mean ± std over them
recipe=""             # sizes and budgets (conf/recipe/<name>.yaml); empty: the corpus' own for this system
                      # (<corpus>_<system>.yaml), else for every system (<corpus>.yaml), if it has one.
                      # smoke: tiny models, a few hundred utterances, every stage on a CPU
e2v_table=false       # stage 5 also pre-trains Emotion2Vec-F and runs the linear probe (C²SER Table V analogue)
# Hydra overrides passed through to each stage's entry point, e.g. "format.max_dur=15".
prepare_args=""
format_args=""
attributes_args=""
targets_args=""
shards_args=""
pretrain_args=""
probe_args=""
sft_args=""
distill_args=""
rl_args=""
decode_args=""
score_args=""

# The help lists every option declared above, with its default and its comment: it cannot fall behind.
option_help=$(sed -n '/^# Options/,/^# The help lists/p' "${BASH_SOURCE[0]}" | grep -E '^[a-z0-9_]+=' |
  while IFS= read -r line; do
    name=${line%%=*}
    comment=$(echo "${line}" | sed -n 's/^[^#]*# *//p')
    printf '  --%-16s [%s] %s\n' "${name}" "${!name}" "${comment:-Hydra overrides for that stage}"
  done)
help_message=$(cat <<EOF
Usage: ./run.sh [options]      (from egs/<corpus>/, or from the top for egs/mini_lime)

Stages:
  #   name        does                                                       writes
  0   prepare     corpus -> Kaldi-style data dirs (its preparer or prepare.py) data/<set>/
  1   format      validate, 16 kHz mono, duration filter, label mapping      data/<set>/
  2   attributes  pitch, loudness, speaking rate -> Low/Medium/High          data/<set>/utt2attr
  3   targets     reasoning targets from a teacher (offline|hf|openai)       data/<set>/targets.jsonl
  4   shards      webdataset shards                                          dump/<set>/shards/
  5   pretrain    Emotion2Vec-S pre-training (+ -F and the probe: --e2v_table) exp/e2vs/
  6   sft         Stage I explicit reasoning SFT                             exp/<system>/sft/
  7   distill     Stage II implicit internalisation                          exp/<system>/distill/
  8   rl          Stage III dr_sapo | sapo | grpo | grpoz | dpo              exp/<system>/rl/
  9   decode      batched inference, explicit and implicit prompts           exp/<system>/decode_*/
  10  score       labels, UA/WA/F1, JS/BC/Brier/ECE, judges, tables           exp/<system>/results.md

Options (--name value; the default in brackets):
${option_help}

A stage is skipped when its record (provenance.json) says it was made from the same config keys
and the same input content as now (python -m local.bin.stamp STAGE ARGS... tells why not).
EOF
)

orig_args=("$@")
. "${main_root}/tools/parse_options.sh" || exit 1
if [ $# -ne 0 ]; then
  echo "$0: unexpected argument '$1' (options are --name value)" >&2
  exit 1
fi
# Refuse bad values before anything runs: a typo must not start a training run.
die() { echo "run.sh: $*" >&2; exit 1; }
is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
for opt in stage stop_stage; do
  { is_int "${!opt}" && [ "${!opt}" -le 10 ]; } || die "--${opt} must be a stage number 0-10, not '${!opt}'"
done
[ "${stage}" -le "${stop_stage}" ] || die "--stage ${stage} --stop_stage ${stop_stage} is an empty range of stages"
for s in ${skip_stages}; do
  { is_int "${s}" && [ "${s}" -le 10 ]; } || die "--skip_stages must list stage numbers 0-10, not '${s}'"
done
{ is_int "${nj}" && [ "${nj}" -ge 1 ]; } || die "--nj must be a whole number of processes >= 1, not '${nj}'"
is_int "${ngpu}" || die "--ngpu must be a whole number of GPUs (0 = CPU), not '${ngpu}'"
[ -n "${nproc}" ] || nproc=$([ "${ngpu}" -gt 0 ] && echo "${ngpu}" || echo 1)
{ is_int "${nproc}" && [ "${nproc}" -ge 1 ]; } || die "--nproc must be a whole number of processes >= 1, not '${nproc}'"
[ "${ngpu}" -eq 0 ] || [ "${nproc}" -eq "${ngpu}" ] || die "--nproc ${nproc} with --ngpu ${ngpu}: one process per GPU"
{ is_int "${num_nodes}" && [ "${num_nodes}" -ge 1 ]; } || die "--num_nodes must be a whole number >= 1, not '${num_nodes}'"
[ "${num_nodes}" -eq 1 ] || [ "${cmd_backend:-local}" = slurm ] || die "--num_nodes ${num_nodes} needs a scheduler \
to place the nodes: cmd_backend=slurm (cmd.sh)"
[ -z "${fold}" ] || [[ "${fold}" =~ ^[A-Za-z0-9_]+$ ]] || die "--fold must be a fold name of corpus.folds, not '${fold}'"

# A test set given as a path (or as name=path) is a user's data dir, and read-only: stage 0 copies it into
# ${data_root}/<name> (corpus.extra_test_sets), and every later stage works on the copy.  A name must not be
# one of the recipe's own sets, or its decodes and table rows would overwrite theirs.
imports=""
names="${train_set} ${dev_set} $(for e in ${test_sets}; do [[ "${e}" == */* ]] || echo "${e}"; done)"
plain_tests=""
for entry in ${test_sets}; do
  if [[ "${entry}" != */* ]]; then plain_tests+=" ${entry}"; continue; fi
  name=${entry%%=*}; path=${entry#*=}
  [ "${name}" != "${entry}" ] || name=$(basename "${entry}")
  [ -d "${path}" ] || die "--test_sets: ${path} is not a directory"
  [[ " ${names} " != *" ${name} "* ]] || die "--test_sets: ${path} would be the set '${name}', \
which this recipe already has; name it: --test_sets \"... mine=${path}\""
  [[ "${name}" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--test_sets: '${name}' is not a set name (letters, digits, _ . -)"
  names+=" ${name}"
  plain_tests+=" ${name}"
  imports+=" +corpus.extra_test_sets.${name}={data_dir:$(cd "${path}" && pwd)}"
done
test_sets=${plain_tests# }
[ "${corpus}" = "${EMOREASON_RECIPE}" ] || { log "--corpus ${corpus} given inside the ${EMOREASON_RECIPE} recipe"; exit 1; }

stage_names=(prepare format attributes targets shards pretrain sft distill rl decode score)
# Refuse up front, before any work, model stages for a system this version has no settings for.
experiment=experiment/${system}.yaml
if [ "${stop_stage}" -ge 5 ] && [ ! -f "${main_root}/conf/${experiment}" ] && [ ! -f "conf/${experiment}" ]; then
  log "Error: --system ${system} is not built yet in this version of EmoReason (no conf/${experiment})."
  log "The data stages run for any system: '$0 --stop_stage 4'."
  exit 1
fi

"${main_root}/tools/install.sh"
. "${main_root}/path.sh"
. "${main_root}/cmd.sh"
# The system's experiment yaml is its registry entry: the baselines of its paper's tables are the
# experiments its score.baselines rows name (conf/baseline/<name>.yaml), trained beside it.
if [ "${baselines}" = auto ]; then
  yaml=conf/${experiment}; [ -f "${yaml}" ] || yaml=${main_root}/conf/${experiment}
  baselines=""
  if [ -f "${yaml}" ]; then
    # python3 of the venv (path.sh) reads it, whatever --python runs the stages with
    baselines=$(python3 -c 'import sys, yaml
rows = ((yaml.safe_load(open(sys.argv[1])) or {}).get("score") or {}).get("baselines") or {}
print(" ".join(dict.fromkeys(row["baseline"] for row in rows.values())))' "${yaml}") \
      || die "cannot read the baselines of ${yaml} (score.baselines: {row: {baseline: NAME, mode: MODE}})"
  fi
fi
# One model decoded on its own: decode.model_dir would otherwise be decoded under every experiment's name
# (one model shown five times in the table), and into the system's own decode dirs.
if [[ " ${decode_args} " == *" decode.model_dir="* ]]; then
  how="./run.sh --stage 9 --baselines \"\" --decode_args \"decode.model_dir=DIR exp_name=NAME\" --score_args \"exp_name=NAME\""
  [ -z "${baselines}" ] || die "decode.model_dir in --decode_args would decode that one model for every experiment \
(${system} ${baselines}); decode it alone: ${how}"
  [[ " ${decode_args} " == *" exp_name="* ]] || die "decode.model_dir in --decode_args needs exp_name=NAME beside \
it, or its decodes replace ${system}'s own: ${how}"
fi

if [ "${ngpu}" -eq 0 ]; then  # nothing asks for a GPU: the GPU jobs' command is the CPU one
  cuda_cmd=${train_cmd}
  decode_cmd=${train_cmd}
fi

# A fold loop runs this script once per fold, each in its own data, dump and exp roots, and then
# reports the mean ± std over the folds (as EmoBox does).
if [ -n "${folds}" ]; then
  if [ "${folds}" = all ]; then
    folds=$(${python} -m local.bin.folds --list "${corpus}")
  fi
  one_fold=()
  while [ ${#orig_args[@]} -gt 0 ]; do  # the options given, less --folds
    case "${orig_args[0]}" in
      --folds) orig_args=("${orig_args[@]:2}") ;;
      *) one_fold+=("${orig_args[0]}"); orig_args=("${orig_args[@]:1}") ;;
    esac
  done
  for k in ${folds}; do
    log "Fold ${k} of ${folds}"
    "$0" ${one_fold[@]+"${one_fold[@]}"} --fold "${k}" --data_root "${data_root}/fold${k}" \
      --dump_root "${dump_root}/fold${k}" --exp_root "${exp_root}/fold${k}"
  done
  if [ "${stop_stage}" -ge 10 ]; then
    ${python} -m local.bin.folds --out "${exp_root}/${system}" \
      $(for k in ${folds}; do echo "${exp_root}/fold${k}/${system}/results.json"; done)
  fi
  log "Successfully finished ${folds}. [elapsed=${SECONDS}s]"
  exit 0
fi

mkdir -p "${exp_root}/log"
# Remember how this experiment was made.
{ echo "# $(date '+%Y-%m-%dT%H:%M:%S') in $(pwd)"; echo "$0 $(printf '%q ' ${orig_args[@]+"${orig_args[@]}"})"; } >> "${exp_root}/run_history.sh"

test_list="[$(echo ${test_sets} | tr ' ' ',')]"
all_sets="${train_set} ${dev_set} ${test_sets}"
# Overrides every stage gets: the corpus config, the recipe's sizes and budgets, and the data layout.
device=$([ "${ngpu}" -gt 0 ] && echo cuda || echo cpu)  # every stage's device follows --ngpu, never a guess
common_args="corpus=${corpus} data_root=${data_root} dump_root=${dump_root} exp_root=${exp_root} \
train_set=${train_set} dev_set=${dev_set} test_sets=${test_list} nj=${nj} device=${device}"
[ -n "${fold}" ] && common_args+=" corpus.fold=${fold}"
common_args+="${imports}"
if [ -z "${recipe}" ]; then  # the corpus' sizes for this system (conf/recipe/<corpus>_<system>.yaml), else for all
  for r in "${corpus}_${system}" "${corpus}"; do
    if [ -f "conf/recipe/${r}.yaml" ] || [ -f "${main_root}/conf/recipe/${r}.yaml" ]; then recipe=${r}; break; fi
  done
fi
[ -n "${recipe}" ] && common_args+=" recipe=${recipe}"
experiment_args="experiment=${system}"

# How a stage's command is launched (cmd.sh: on this machine or through Slurm), by kind:
#   data LOG MODULE ARGS      one process with --nj workers, through ${train_cmd}; where cmd.sh sets
#                             data_job_cmd (Slurm), the stage runs here and its --nj jobs are launched with it
#   train LOG MODULE ARGS     ${nproc} processes per node on ${num_nodes} node(s) under torchrun when more than
#                             one, through ${cuda_cmd} --gpu ${ngpu}
#   single LOG MODULE ARGS    one process, on one GPU when --ngpu > 0
#   decode LOG MODULE ARGS    ${nproc} x ${num_nodes} jobs at once, each one GPU's (or CPU process') part of every
#                             test set, then one that merges the parts into what a single job writes
launch_data() {
  local logf=$1 module=$2; shift 2
  if [ -n "${data_job_cmd:-}" ] && [ "${nj}" -gt 1 ]; then
    # the stage runs here; its --nj jobs go to the cluster, one launcher call each (local/utils/jobs.py)
    EMOREASON_JOB_CMD="${data_job_cmd}" EMOREASON_JOB_LOG="${logf}" \
      "${main_root}/tools/launch.sh" --backend local "${logf}" ${python} -m "${module}" "$@"
  else
    ${train_cmd} --cpus "${nj}" "${logf}" ${python} -m "${module}" "$@"
  fi
}
launch_train() {
  local logf=$1 module=$2; shift 2
  if [ $((nproc * num_nodes)) -eq 1 ]; then
    ${cuda_cmd} --gpu "${ngpu}" "${logf}" ${python} -m "${module}" "$@"
  else
    ${cuda_cmd} --gpu "${ngpu}" --cpus "${nproc}" --num_nodes "${num_nodes}" "${logf}" \
      "${main_root}/tools/torchrun.sh" "${nproc}" "${num_nodes}" -m "${module}" "$@"
  fi
}
launch_single() {  # one process, on one GPU when there are any (the probe's feature extraction)
  local logf=$1 module=$2; shift 2
  ${cuda_cmd} --gpu $((ngpu > 0 ? 1 : 0)) "${logf}" ${python} -m "${module}" "$@"
}
launch_decode() {
  local logf=$1 module=$2 jobs=$((nproc * num_nodes)) gpu=$((ngpu > 0 ? 1 : 0)) k pids=() failed=0; shift 2
  if [ "${jobs}" -eq 1 ]; then
    ${decode_cmd} --gpu "${gpu}" "${logf}" ${python} -m "${module}" "$@"
    return
  fi
  for k in $(seq 1 "${jobs}"); do
    ${decode_cmd} --gpu "${gpu}" --job "${k}" "${logf%.log}.${k}.log" \
      ${python} -m "${module}" "$@" decode.num_jobs="${jobs}" decode.job="${k}" &
    pids+=($!)
  done
  for k in "${pids[@]}"; do wait "${k}" || failed=$((failed + 1)); done
  [ "${failed}" -eq 0 ] || { log "Error: ${failed} of ${jobs} decoding jobs failed; see ${logf%.log}.*.log"; return 1; }
  ${train_cmd} "${logf}" ${python} -m "${module}" "$@" decode.num_jobs="${jobs}"
}

# run_stage N NAME TAG KIND MODULE ARGS... : stage N runs `python -m MODULE ARGS` through launch_KIND (logged
# in exp/log/N.NAME.TAG.log) unless its records say it is up to date for these ARGS: made from the
# same values of the config keys it reads and the same content of its inputs (local/bin/stages.py).
# A stage that runs changes what the next ones read, so they run too; one that writes the same
# bytes again leaves them up to date.
ran_dir=$(mktemp -d)
trap 'rm -rf "${ran_dir}"' EXIT
run_stage() {
  local n=$1 name=$2 tag=$3 kind=$4 module=$5 why
  shift 5
  if [ ${stage} -gt "${n}" ] || [ ${stop_stage} -lt "${n}" ] || [[ " ${skip_stages} " == *" ${n} "* ]]; then
    return 0
  fi
  if ! ${force}; then
    if why=$(${python} -m local.bin.stamp "${name}" "$@" 2>&1); then
      log "Stage ${n} (${name}, ${tag}): up to date, skipped"
      [ -z "${why}" ] || echo "${why}" | sed 's/^/    /'
      return 0
    fi
    log "Stage ${n} (${name}, ${tag}) runs, because:"
    echo "${why}" | sed 's/^/    /'
  fi
  log "Stage ${n} (${name}, ${tag}): ${python} -m ${module} $*"
  "launch_${kind}" "${exp_root}/log/${n}.${name}.${tag}.log" "${module}" "$@"
  touch "${ran_dir}/${name}"
}

# shellcheck disable=SC2086  # the *_args are word lists of Hydra overrides
run_stage 0 prepare data data local.bin.prepare ${common_args} ${prepare_args}
if [ -e "${ran_dir}/prepare" ]; then  # stage 0 ran just now
  # Report, don't fail: stage 1 repairs what it can and rejects the rest by name.
  for s in ${all_sets}; do
    ${python} -m local.bin.validate --report --any-labels "${data_root}/${s}" || true
  done
fi
run_stage 1 format data data local.bin.format ${common_args} ${format_args}
run_stage 2 attributes data data local.bin.attributes ${common_args} ${attributes_args}
run_stage 3 targets data data local.bin.targets ${common_args} ${targets_args}
run_stage 4 shards data data local.bin.shards ${common_args} ${shards_args}
if [ ${stop_stage} -ge 1 ] && [ ${stage} -le 4 ]; then
  ${python} -m local.bin.summary --data_root "${data_root}" --dump_root "${dump_root}" ${all_sets}
fi
run_stage 5 pretrain e2vs train local.bin.pretrain ${common_args} ${experiment_args} ${pretrain_args}
if ${e2v_table}; then  # C²SER Table V: Emotion2Vec-S vs -F (no L_cate) vs the untrained init, by linear probe
  run_stage 5 pretrain e2vf train local.bin.pretrain ${common_args} ${experiment_args} pretrain.lambda_cate=0 \
    "pretrain.exp_dir=${exp_root}/e2vf" ${pretrain_args}
  run_stage 5 probe probe single local.bin.probe ${common_args} ${experiment_args} ${probe_args}
  if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ] && [ ! -e "${ran_dir}/probe" ]; then
    cat "${exp_root}/probe/results.md"  # the probe printed it when it ran
  fi
fi

# Stages 6-9 of one experiment: the system (main) or a baseline (conf/baseline/<name>.yaml), in exp/<exp_name>/.
run_experiment() {
  local variant=$1 exp_name=${system} variant_args="" args
  if [ "${variant}" != main ]; then exp_name=${system}_${variant}; variant_args="baseline=${variant}"; fi
  args="${common_args} ${experiment_args} ${variant_args}"
  run_stage 6 sft "${exp_name}" train local.bin.sft ${args} ${sft_args}
  run_stage 7 distill "${exp_name}" train local.bin.distill ${args} ${distill_args}
  run_stage 8 rl "${exp_name}" train local.bin.rl ${args} ${rl_args}
  run_stage 9 decode "${exp_name}" decode local.bin.decode ${args} ${decode_args}
}
# Experiments run on CPU nj / nproc at a time, each process single-threaded on its own core; on GPUs
# one after another.  A baseline that starts from the system's models names the system's exp dir
# in its config (conf/baseline/<name>.yaml: ${exp_root}/${system}/...) and waits for the system;
# the others run beside it.  Each runs in its own process group (set -m), so that an interrupt
# stops it whole; one that fails fails the run once the others of its round have finished.
needs_system() {
  local yaml
  for yaml in "conf/baseline/$1.yaml" "${main_root}/conf/baseline/$1.yaml"; do
    if [ -f "${yaml}" ]; then
      grep -qF '${exp_root}/${system}/' "${yaml}"
      return
    fi
  done
  return 1
}
first=main
later=""
for variant in ${baselines}; do
  if needs_system "${variant}"; then later+=" ${variant}"; else first+=" ${variant}"; fi
done
parallel=$([ "${ngpu}" -eq 0 ] && echo $(( nj > nproc ? nj / nproc : 1 )) || echo 1)  # each takes ${nproc} cores
failed=0
set -m
trap 'trap - INT TERM; for p in $(jobs -p); do kill -TERM -- "-${p}" 2>/dev/null || true; done; exit 130' INT TERM
for round in "${first}" "${later}"; do
  pids=()
  for variant in ${round}; do
    while [ "$(jobs -rp | wc -l)" -ge "${parallel}" ]; do wait -n || true; done
    run_experiment "${variant}" &
    pids+=($!)
  done
  for pid in ${pids[@]+"${pids[@]}"}; do wait "${pid}" || failed=$((failed + 1)); done
  [ ${failed} -eq 0 ] || break  # the next round starts from models that may be missing
done
trap - INT TERM
set +m
if [ ${failed} -gt 0 ]; then
  log "Error: ${failed} experiment(s) failed; see ${exp_root}/log/"
  exit 1
fi
baseline_list="[$(echo ${baselines} | tr ' ' ',')]"
run_stage 10 score "${system}" data local.bin.score ${common_args} ${experiment_args} "baselines=${baseline_list}" ${score_args}
if [ ${stop_stage} -ge 10 ] && [ ! -e "${ran_dir}/score" ] && [ -f "${exp_root}/${system}/results.md" ]; then
  cat "${exp_root}/${system}/results.md"  # stage 10 printed it when it ran
fi
log "Successfully finished. [elapsed=${SECONDS}s]"
exit
}
