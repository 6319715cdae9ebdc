#!/usr/bin/env bash
# RAVDESS (Zenodo 1188976, Audio_Speech_Actors_01-24; set RAVDESS in db.sh or the environment).  The sets are
# those of corpus.fold in conf/corpus/ravdess.yaml (EmoBox's actor folds); options given here are
# this corpus' defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=ravdess

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  "$@"
