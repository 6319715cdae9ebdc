#!/usr/bin/env bash
# IEMOCAP (USC's IEMOCAP_full_release; set IEMOCAP in db.sh or the environment).  The sets are those of
# corpus.fold in conf/corpus/iemocap.yaml (default: Session 5 is the test set); options given here are
# this corpus' defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=iemocap

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  "$@"
