#!/usr/bin/env bash
# CREMA-D (CheyneyComputerScience/CREMA-D, AudioWAV/; set CREMA_D in db.sh or the environment).  The sets are
# those of corpus.fold in conf/corpus/crema_d.yaml (5 speaker-independent folds of actors); options given
# here are this corpus' defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=crema_d

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  "$@"
