"""Every node refuses the 4K 300-frame case (300 frames of 3840x2160: ~30 GB as float32 frames, far more for a
UNet pass) before allocating it, with the estimate, the limit and the settings that fit; nothing is allocated
and nothing crashes."""
import time

import pytest
import torch

from comfyui_stem.stem_core.errors import MemoryBudgetError
from comfyui_stem.stem_core.fatezero import AttentionStore
from comfyui_stem.stem_core.inversion import InversionTrajectory

FRAMES, LATENT_HW = 300, (270, 480)  # 3840x2160 px


@pytest.fixture(scope="module")
def big(tiny, glue):
    """The 4K clip's latents (zeros, 622 MB) and a trajectory that reuses them (no copies)."""
    latent = torch.zeros(FRAMES, 4, *LATENT_HW)
    sigmas = glue("host").ddim_sigmas(tiny[0], 2)
    traj = InversionTrajectory(latents=[latent, latent, latent], inversion_sigmas=sigmas.flip(0),
                               sampling_sigmas=sigmas, latent_scale=0.18215, mode="stem", settings={},
                               source_conditioning=None, requested_steps=2)
    return {"samples": latent}, traj


def refused(fn):
    t0 = time.monotonic()
    with pytest.raises(MemoryBudgetError) as err:
        fn()
    text = str(err.value)
    assert time.monotonic() - t0 < 20, "refused only after working on it"
    assert "GB" in text and "free" in text and ("frame_load_cap" in text or "frames" in text), text
    return text


def test_load_video_refuses_the_4k_clip(node, input_dir, clip_4k):
    import shutil
    shutil.copy(clip_4k, input_dir / "clip_4k.mp4")
    text = refused(lambda: node("STEMVideoLoad").load("clip_4k.mp4", 0.0, 0, 0, 0, 0, 1, "resize"))
    assert "300 frames of 3840x2160" in text and "set frame_load_cap <= " in text and "custom_width" in text


def test_sampling_nodes_refuse_the_4k_latents(node, tiny, big):
    model, clip, _ = tiny
    latent, traj = big
    cond = [[clip.encode_from_tokens(clip.tokenize("a field")), {}]]
    traj.source_conditioning = cond
    patched = node("STEMBasisEstimate").patch(model, "stem", 256, 3, 0.05, 0, "paper", "all", False, "tokens", 0)[0]
    assert "STEM inversion of 300 frames of 3840x2160" in refused(lambda: node("STEMInvert").invert(patched, latent,
                                                                                                   cond, 2))
    refused(lambda: node("STEMReconstruct").reconstruct(patched, traj))
    refused(lambda: node("STEMTokenFlowEdit").edit(model, traj, cond, cond, 7.5, 0.8, 0.5, 8, 0))
    traj.extras["attention_store"] = AttentionStore(2, FRAMES)
    traj.extras["source_prompt"] = "a field"
    refused(lambda: node("STEMFateZeroEdit").edit(patched, traj, clip, "a meadow", "", 0.3, 0.8, 0.5, "", 7.5))


def test_chunk_tokens_that_cannot_fit_is_refused(node, tiny):
    """A chunk_tokens whose logits alone exceed the memory is refused with the figures before EM runs."""
    model, clip, _ = tiny
    cond = [[clip.encode_from_tokens(clip.tokenize("a field")), {}]]
    latent = {"samples": torch.zeros(64, 4, 128, 128)}  # 1M tokens at the top layer
    patched = node("STEMBasisEstimate").patch(model, "stem", 4096, 3, 0.05, 0, "paper", "all", False, "tokens",
                                              1 << 24)[0]
    text = refused(lambda: node("STEMInvert").invert(patched, latent, cond, 2))
    assert "em " in text and "chunk_tokens" in text
