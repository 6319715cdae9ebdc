#!/usr/bin/env bash
# ESD, the Emotional Speech Dataset (HLT Singapore, "Emotion Speech Dataset/0001 ... 0020"; set ESD in db.sh
# or the environment).  The sets are those of conf/corpus/esd.yaml: the release's own split (train /
# evaluation / test) of all 20 speakers; options given here are this corpus' defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=esd

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  "$@"
