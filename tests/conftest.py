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
def clips(tmp_path_factory) -> Path:
    """A folder with seeded synthetic stand-ins of the shared clips, same names and the properties the tests
    use (frame counts, sizes, rates, audio, index placement, a frame folder): tests/fixtures/clips.py."""
    from tests.fixtures.clips import make_clip_set
    return make_clip_set(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="session")
def clip_4k(tmp_path_factory) -> Path:
    """300 frames of 3840x2160 (tests/fixtures/clips.py make_4k_clip): a clip no node can hold in memory here."""
    from tests.fixtures.clips import make_4k_clip
    return make_4k_clip(tmp_path_factory.mktemp("clip4k") / "clip_4k.mp4")


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """The real clips of ../shared/data/videos (CI has them); a newcomer's clone has none: skip, saying so."""
    if not (SHARED_VIDEOS / "wolf.mp4").exists():
        pytest.skip(f"real clips not found at {SHARED_VIDEOS} (a clone without ../shared beside it): real-footage "
                    f"test skipped; the synthetic stand-ins cover the same properties")
    return SHARED_VIDEOS
