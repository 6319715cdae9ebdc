#!/usr/bin/env bash
# Emo-Emilia, C²SER's test set (the C2SER repository's Emo-Emilia/; set EMO_EMILIA in db.sh or the
# environment).  Emo-Emilia is a TEST SET ONLY: C²SER scores models trained on other corpora on all of its
# 1400 utterances.  Stages 1-4 need a train set (stage 2 bins every set's attributes with the train set's
# mean and deviation) and a dev set, so the default fold of conf/corpus/emo_emilia.yaml carves small ones
# out of it (84 utterances of 84 speakers), and its test set is the other 1316: scores on it are NOT those of
# C²SER's tables.  To score a model on all 1400, as C²SER does, its own recipe writes Emo-Emilia as an
# extra test set (corpus.extra_test_sets; README, "Real corpora").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=emo_emilia

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  "$@"
