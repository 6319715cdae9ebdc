#!/usr/bin/env bash
# MSP-Podcast (UT Dallas, releases 1.6 to 1.12; set MSP_PODCAST in db.sh or the environment).  The sets are
# those of conf/corpus/msp_podcast.yaml: the release's Split_Set (train = Train, dev = Development, test =
# Test1, test2 = Test2); options given here are this corpus' defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=msp_podcast

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test test2" \
  "$@"
