#!/usr/bin/env bash
# Idempotent installer: tools/venv with the pinned stack, plus the system packages
# the recipes call (espeak-ng for the mini_lime TTS, ffmpeg for MELD's mp4 clips).
# Safe to run any number of times; it says what it did and what it skipped.
# Re-installs the Python stack only when setup.py changed since the last
# successful install.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${root}/tools/venv
stamp=${venv}/.installed          # holds the hash of setup.py that was installed, then the extras
python=${PYTHON:-python3}

log() { echo "[install] $*"; }

# --- system packages -------------------------------------------------------
# command:package.  --with-slurm adds a single-node Slurm (slurmctld, slurmd, srun, munge) for the Slurm
# backend's tests (tools/test.sh asks for it); without root or apt it is left out with a warning, and the
# tests that need it skip saying so.  --with-demo adds the web demo's extra (gradio) and, for its browser
# test, Debian's chromium + chromium-driver (built from one source package, so they always match).
with_slurm=false
with_demo=false
for arg in "$@"; do
  case "${arg}" in
    --with-slurm) with_slurm=true ;;
    --with-demo) with_demo=true ;;
    *) echo "$0: unknown option ${arg} (--with-slurm, --with-demo)" >&2; exit 1 ;;
  esac
done
apt_install() {  # PACKAGE... : returns non-zero when they cannot be installed here
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    log "installing with apt-get: $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
    log "installing with sudo apt-get: $*"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    return 1
  fi
}
missing_of() {  # COMMAND:PACKAGE... -> the packages whose command is missing
  local pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null 2>&1 || echo "${pair#*:}"; done
}
required=(espeak-ng:espeak-ng ffmpeg:ffmpeg)
mapfile -t missing < <(missing_of "${required[@]}")
if [ ${#missing[@]} -eq 0 ]; then
  log "system packages present, skipped: ${required[*]%%:*}"
elif ! apt_install "${missing[@]}"; then
  log "ERROR: please install ${missing[*]} with your system's package manager" >&2
  exit 1
fi
if ${with_slurm}; then
  slurm=(slurmctld:slurmctld slurmd:slurmd srun:slurm-client munged:munge)
  mapfile -t missing < <(missing_of "${slurm[@]}")
  if [ ${#missing[@]} -eq 0 ]; then
    log "Slurm present, skipped: ${slurm[*]%%:*}"
  elif ! apt_install "${missing[@]}"; then
    log "WARNING: could not install ${missing[*]} (no apt-get as root or with sudo); the Slurm tests will skip"
  fi
fi

if ${with_demo}; then
  browser=(chromium:chromium chromedriver:chromium-driver)
  mapfile -t missing < <(missing_of "${browser[@]}")
  if [ ${#missing[@]} -eq 0 ]; then
    log "browser present, skipped: ${browser[*]%%:*}"
  elif ! apt_install "${missing[@]}"; then
    log "WARNING: could not install ${missing[*]} (no apt-get as root or with sudo); the demo's browser test will skip"
  fi
fi

# --- Python environment ----------------------------------------------------
# The stamp is "<sha256 of setup.py> <extras>": a later call asking for no more extras than were
# installed, from the same setup.py, skips; asking for more installs them.
extras=test
${with_demo} && extras=test,demo
want=$(sha256sum "${root}/setup.py" | cut -d' ' -f1)
{ read -r have have_extras < "${stamp}"; } 2>/dev/null || true
have=${have:-}
have_extras=${have_extras:-test}
if [ "${want}" = "${have}" ] && [ "${have_extras}" = test,demo ]; then
  extras=test,demo  # keep what is there
fi
if [ -z "${have}" ]; then
  # torch's PyPI wheel brings the CUDA libraries: the venv takes ~8.5 GB.  Say so
  # up front instead of letting pip die half-way with "No space left on device".
  need_gb=10
  free_gb=$(( $(df -Pk "${root}/tools" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
  if [ "${free_gb}" -lt "${need_gb}" ]; then
    log "ERROR: ${free_gb} GB free under ${root}/tools; the python stack needs about ${need_gb} GB" >&2
    exit 1
  fi
fi

if [ -x "${venv}/bin/python" ]; then
  log "venv exists, skipped: ${venv}"
else
  log "creating venv with $(${python} --version 2>&1): ${venv}"
  ${python} -m venv "${venv}"
fi

if [ "${want}" = "${have}" ] && [ "${extras}" = "${have_extras}" ]; then
  log "python packages up to date with setup.py ([${extras}]), skipped"
else
  log "installing python packages (pip install -e '.[${extras}]'); the first time takes a few minutes"
  # --no-cache-dir: a cached copy of every wheel would double the disk it takes.
  "${venv}/bin/pip" install --quiet --no-cache-dir --upgrade pip
  "${venv}/bin/pip" install --quiet --no-cache-dir -e "${root}[${extras}]"
  echo "${want} ${extras}" > "${stamp}"
  log "python packages installed"
fi
