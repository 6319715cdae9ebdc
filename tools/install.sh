#!/usr/bin/env bash
# Idempotent installer: tools/venv with the pinned stack, plus the system packages
# the recipes call (espeak-ng for the mini_lime TTS, ffmpeg for MELD's mp4 clips).
# Safe to run any number of times; it says what it did and what it skipped.
# Re-installs the Python stack only when setup.py changed since the last
# successful install.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${root}/tools/venv
stamp=${venv}/.installed          # holds the hash of setup.py that was installed
python=${PYTHON:-python3}

log() { echo "[install] $*"; }

# --- system packages -------------------------------------------------------
apt_packages=(espeak-ng ffmpeg)
missing=()
for pkg in "${apt_packages[@]}"; do
  command -v "${pkg}" >/dev/null 2>&1 || missing+=("${pkg}")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "system packages present, skipped: ${apt_packages[*]}"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  log "installing with apt-get: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
  log "installing with sudo apt-get: ${missing[*]}"
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "ERROR: please install ${missing[*]} with your system's package manager" >&2
  exit 1
fi

# --- Python environment ----------------------------------------------------
want=$(sha256sum "${root}/setup.py" | cut -d' ' -f1)
have=$(cat "${stamp}" 2>/dev/null || true)
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

if [ "${want}" = "${have}" ]; then
  log "python packages up to date with setup.py, skipped"
else
  log "installing python packages (pip install -e '.[test]'); the first time takes a few minutes"
  # --no-cache-dir: a cached copy of every wheel would double the disk it takes.
  "${venv}/bin/pip" install --quiet --no-cache-dir --upgrade pip
  "${venv}/bin/pip" install --quiet --no-cache-dir -e "${root}[test]"
  echo "${want}" > "${stamp}"
  log "python packages installed"
fi
