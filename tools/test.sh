#!/usr/bin/env bash
# Installs if needed, then runs the test suite (benchmarks under tests/bench are not tests).
#   tools/test.sh                 # everything CI runs
#   tools/test.sh tests/unit -k kaldi
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# the Slurm backend is tested on a real single-node Slurm, the web demo in a real headless browser
"${root}/tools/install.sh" --with-slurm --with-demo
cd "${root}"
. ./path.sh
if [ $# -eq 0 ]; then set -- tests; fi
exec python -m pytest "$@"
