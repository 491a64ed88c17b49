"""STEMBasisEstimate + STEMInvert + STEMReconstruct inside the real (in-process) ComfyUI."""
import pytest
import torch


@pytest.fixture(scope="module")
def small_clip(comfy_host, shared_videos):
    """8 frames of wolf.mp4 at 64x64, as IMAGE [8, 64, 64, 3]."""
    import cv2
    cap = cv2.VideoCapture(str(shared_videos / "wolf.mp4"))
    frames = []
    while len(frames) < 8:
        ok, f = cap.read()
        frames.append(cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), (64, 64), interpolation=cv2.INTER_AREA))
    return torch.from_numpy(__import__("numpy").stack(frames)).float() / 255.0


def encode(comfy_host, tiny, images, text="a wolf"):
    nodes = comfy_host["nodes"]
    model, clip, vae = tiny
    latent = nodes.VAEEncode().encode(vae, images)[0]
    cond = nodes.CLIPTextEncode().encode(clip, text)[0]
    return latent, cond


def test_invert_reconstruct_stem(comfy_host, tiny, node, small_clip):
    model, clip, vae = tiny
    latent, cond = encode(comfy_host, tiny, small_clip)
    patched = node("STEMBasisEstimate").patch(model, "stem", 16, 2, 0.05, 0, "paper", "all", True, "tokens", 0)[0]
    inv, traj, info = node("STEMInvert").invert(patched, latent, cond, 10)
    assert traj.steps == 10 and traj.frames == 8
    rec = node("STEMReconstruct").reconstruct(patched, traj)[0]["samples"]
    err = (rec - latent["samples"]).abs().mean() / latent["samples"].abs().mean()
    print(info, float(err))
    assert err < 0.2


@pytest.mark.parametrize("ctx", ["plain", "per_frame", "stem", "all_frame", "two_frame"])
@pytest.mark.parametrize("steps", [10, 50])
def test_tmp_probe(comfy_host, tiny, node, small_clip, ctx, steps):
    model, clip, vae = tiny
    latent, cond = encode(comfy_host, tiny, small_clip)
    patched = model if ctx == "plain" else node("STEMBasisEstimate").patch(model, ctx, 16, 2, 0.05, 0, "paper", "all", True, "tokens", 0)[0]
    with torch.no_grad():
        inv, traj, info = node("STEMInvert").invert(patched, latent, cond, steps)
        rec = node("STEMReconstruct").reconstruct(patched, traj)[0]["samples"]
    err = (rec - latent["samples"]).abs().mean() / latent["samples"].abs().mean()
    print(ctx, steps, float(err), float(inv["samples"].std()))
