#!/usr/bin/env bash
# MELD (declare-lab, MELD.Raw.tar.gz with train/dev/test.tar.gz extracted inside; set MELD in db.sh or the
# environment).  The sets are MELD's official train/dev/test (conf/corpus/meld.yaml); the audio is read
# from the mp4 clips with ffmpeg (tools/install.sh installs it).  Options given here are this corpus' defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=meld

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  "$@"
