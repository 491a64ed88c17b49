"""A FULL-SIZE SD1.5 checkpoint (random weights, written by tests/fixtures/checkpoints.py through ComfyUI's save
path) loads through core Load Checkpoint and runs through the pack's nodes with the real shapes: a 320-channel
UNet with 8 heads, the 768-wide CLIP ViT-L/14 text encoder, the AutoencoderKL. The values are noise; the
tests check shapes, finiteness and the node plumbing, never that anything looks good."""
import pytest
import torch

from tests.conftest import COMFYUI_DIR
from tests.fixtures.checkpoints import install_into, random_sd15_checkpoint


@pytest.fixture(scope="module")
def sd15(comfy_host):
    name = install_into(COMFYUI_DIR, random_sd15_checkpoint())
    with torch.no_grad():  # as the server runs every node (ComfyUI's CLIP constructor copies into a parameter)
        return comfy_host["nodes"].CheckpointLoaderSimple().load_checkpoint(name)


def test_loads_as_sd15_with_the_real_shapes(sd15, glue):
    model, clip, vae = sd15[:3]
    assert type(model.model.model_config).__name__ == "SD15"
    glue("host").require_sd15(model, "test")
    unet = model.model.diffusion_model
    params = sum(p.numel() for p in unet.parameters())
    assert 850e6 < params < 870e6, params
    from comfyui_stem.stem_core.sites import SD15_SITES, sites_of_unet
    assert sites_of_unet(unet) == SD15_SITES  # the table the pack uses is what the real UNet has
    with torch.no_grad():
        cond = clip.encode_from_tokens(clip.tokenize("a wolf in the snow"))
        latent = vae.encode(torch.rand(2, 64, 64, 3))
        back = vae.decode(latent)
    assert tuple(cond.shape) == (1, 77, 768) and torch.isfinite(cond).all()
    assert tuple(latent.shape) == (2, 4, 8, 8) and torch.isfinite(latent).all()
    assert tuple(back.shape) == (2, 64, 64, 3) and torch.isfinite(back).all()


def test_stem_inversion_and_reconstruction_run_full_size(sd15, node, comfy_host):
    model, clip, vae = sd15[:3]
    nodes = comfy_host["nodes"]
    patched = node("STEMBasisEstimate").patch(model, "stem", 256, 3, 0.05, 0, "paper", "all", False, "tokens", 0)[0]
    with torch.no_grad():
        latent = nodes.VAEEncode().encode(vae, torch.rand(2, 64, 64, 3))[0]
        cond = nodes.CLIPTextEncode().encode(clip, "a wolf in the snow")[0]
        inv, traj, _ = node("STEMInvert").invert(patched, latent, cond, 2)
        rec = node("STEMReconstruct").reconstruct(patched, traj)[0]["samples"]
    assert traj.frames == 2 and traj.steps == 2
    assert len(traj.extras["stem_bases"]) == 2 and all(len(b) == 16 for _, b in traj.extras["stem_bases"])
    channels = {b.shape[-1] for _, by_site in traj.extras["stem_bases"] for b in by_site.values()}
    assert channels == {320, 640, 1280}
    assert rec.shape == latent["samples"].shape and torch.isfinite(rec).all() and torch.isfinite(inv["samples"]).all()
