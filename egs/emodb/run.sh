#!/usr/bin/env bash
# EmoDB, the Berlin Database of Emotional Speech (its download's wav/; set EMODB in db.sh or the environment).
# The sets are those of corpus.fold in conf/corpus/emodb.yaml (5 speaker-independent folds of a man and a
# woman each); options given here are this corpus' defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=emodb

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  "$@"
