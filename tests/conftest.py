"""Shared test settings: where the shared clips and the ComfyUI host live, and the one way tests import
the pack (``comfyui_stem``, through scripts/comfy_host.import_pack) and the scripts' libraries."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = (REPO.parent / "shared" / "data" / "videos").resolve()
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", REPO / ".host" / "ComfyUI")).resolve()

sys.path.insert(0, str(REPO / "scripts"))  # comfy_client, comfy_host, workflow_format, demo_clip
import comfy_host  # noqa: E402

comfy_host.import_pack()


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not (SHARED_VIDEOS / "wolf.mp4").exists():
        pytest.fail(f"shared clips not found at {SHARED_VIDEOS}; clone the project with ../shared beside it")
    return SHARED_VIDEOS
