#!/usr/bin/env bash
# Install msslab into .venv (Python 3.11) with its test extras, plus the system
# packages it needs on Debian/Ubuntu. Safe to rerun: each step is skipped when done.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

python=${PYTHON:-python3.11}
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# museval imports musdb, which imports stempeg, which refuses to import without ffmpeg/ffprobe.
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "--- installing ffmpeg"
  apt_install ffmpeg
fi

# data=rendered renders MIDI with FluidSynth and the General MIDI soundfont FluidR3_GM.
if ! command -v fluidsynth >/dev/null 2>&1 || [ ! -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; then
  echo "--- installing fluidsynth and fluid-soundfont-gm"
  apt_install fluidsynth fluid-soundfont-gm
fi

# Debian's python3.11 ships without ensurepip unless python3.11-venv is installed.
if ! "$python" -c "import ensurepip, venv" >/dev/null 2>&1; then
  echo "--- installing ${python}-venv"
  apt_install "$(basename "$python")-venv"
fi

# (Re)create .venv when missing, broken or not Python 3.11.
if ! .venv/bin/python -c "import sys, pip; sys.exit(sys.version_info[:2] != (3, 11))" >/dev/null 2>&1; then
  echo "--- creating .venv with $python"
  "$python" -m venv --clear .venv
fi

# --no-cache-dir: torch's CUDA wheels are several GB; a cached copy beside the installed one
# doubles what the install needs on disk.
echo "--- pip install -e .[dev]"
.venv/bin/python -m pip install -q --no-cache-dir -e ".[dev]"
