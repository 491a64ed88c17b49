"""scripts/setup.sh with a user's ComfyUI (COMFYUI_DIR): the pack is linked into custom_nodes only when nothing
of that name is there, a user's folder is never deleted or replaced, and nothing is installed into the user's
Python (set-up names the missing requirements and the command instead)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def setup(comfy: Path, **env):
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "COMFYUI_DIR": str(comfy), **env})


@pytest.fixture
def users_comfy(tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "main.py").write_text("# a user's ComfyUI\n")
    return comfy


def test_links_into_an_empty_custom_nodes(users_comfy):
    res = setup(users_comfy, PYTHON=sys.executable)
    assert res.returncode == 0, res.stderr
    link = users_comfy / "custom_nodes" / "comfyui_stem"
    assert link.is_symlink() and link.resolve() == REPO.resolve()
    assert f"runs with {sys.executable}" in res.stdout
    assert setup(users_comfy, PYTHON=sys.executable).returncode == 0  # idempotent


def test_never_replaces_a_users_folder(users_comfy):
    mine = users_comfy / "custom_nodes" / "comfyui_stem"
    mine.mkdir()
    (mine / "precious.txt").write_text("mine")
    res = setup(users_comfy, PYTHON=sys.executable)
    assert res.returncode == 2
    assert "already exists and is not a link to this clone" in res.stderr and "Nothing was changed" in res.stderr
    assert (mine / "precious.txt").read_text() == "mine" and not mine.is_symlink()


def test_names_missing_requirements_without_installing(users_comfy, tmp_path):
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")  # no site-packages: av, cv2, ... missing
    bare.chmod(0o755)
    res = setup(users_comfy, PYTHON=str(bare))
    assert res.returncode == 0, res.stderr
    assert "lacks: av cv2 kornia einops" in res.stderr and "Nothing was installed" in res.stderr
    assert f"{bare} -m pip install -r" in res.stderr
