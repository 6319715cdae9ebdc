#!/usr/bin/env bash
# EmoBox's data partitions (emo-box/EmoBox) of one of its corpora: set EMOBOX (db.sh or the environment) to
# the EmoBox repository and EMOBOX_DATASET to the dataset (default cremad; its audio under the repository's
# downloads/<dataset>/, or under EMOBOX_DOWNLOADS).  The sets are those of corpus.fold in
# conf/corpus/emobox.yaml: EmoBox's fold_<k> files; options given here are this corpus' defaults.
#   EMOBOX_DATASET=meld ./run.sh --stop_stage 4
# EmoBox ships no transcripts, so stages 2 (the speaking rate is phones per second of the transcript) and 3
# (every reasoning target quotes or reads the transcript) are skipped; what EmoBox is for runs: the shards
# (stage 4) and Emotion2Vec-S with its linear probe by EmoBox's protocol (stage 5, --e2v_table true:
# C²SER Table V).  Stages 6-10 need targets: give stage 1 an ASR model for the transcripts and run them all,
#   ./run.sh --skip_stages "" --format_args "format.asr.model=/path/to/whisper-large-v3"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=emobox

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  --skip_stages "2 3" \
  "$@"
