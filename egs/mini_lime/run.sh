#!/usr/bin/env bash
# mini_lime: the embedded LIME-style corpus (espeak-ng, offline).  Every stage of
# ../../run.sh runs on it on a CPU; options given here are this corpus' defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. ../../db.sh
export EMOREASON_RECIPE=mini_lime

exec ../../run.sh \
  --train_set train \
  --dev_set dev \
  --test_sets "test" \
  "$@"
