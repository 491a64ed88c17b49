import time
import pytest
import torch
from tests.host.test_stem_invert import small_clip, encode  # noqa


@pytest.mark.parametrize("ctx", ["stem", "two_frame", "plain"])
def test_probe(comfy_host, tiny, node, small_clip, ctx):
    model, clip, vae = tiny
    text = "a wolf in the snow"
    latent, cond = encode(comfy_host, tiny, small_clip, text)
    with torch.no_grad():
        patched = model if ctx == "plain" else node("STEMBasisEstimate").patch(model, ctx, 16, 2, 0.05, 0, "paper", "all", True, "tokens", 0)[0]
        t = time.time()
        rec_model = node("STEMAttentionStore").apply(patched, "fatezero", "cpu")[0]
        inv, traj, info = node("STEMInvert").invert(rec_model, latent, cond, 8)
        t1 = time.time()
        store = traj.extras["attention_store"]
        print(ctx, "invert", t1 - t, store.describe())
        rec = node("STEMReconstruct").reconstruct(patched, traj)[0]["samples"]
        t2 = time.time()
        ed, mask, info = node("STEMFateZeroEdit").edit(patched, traj, clip, text, text, "", 0.3, 1.0, 1.0, "", 1.0, 8)
        t3 = time.time()
        ed = ed["samples"]
        src = latent["samples"]
        rel = lambda a, b: float((a - b).abs().mean() / b.abs().mean())
        print(ctx, "recon t", t2 - t1, "edit t", t3 - t2, "edit vs rec", rel(ed, rec), "rec vs src", rel(rec, src), "edit vs src", rel(ed, src))
        ed0 = node("STEMFateZeroEdit").edit(patched, traj, clip, text, text, "", 0.3, 0.0, 0.0, "", 1.0, 8)[0]["samples"]
        print(ctx, "no fusion vs rec", rel(ed0, rec))
        ed2, mask2, info2 = node("STEMFateZeroEdit").edit(patched, traj, clip, text, "a tiger in the snow", "wolf", 0.3, 0.8, 0.5, "tiger:2", 7.5, 8)
        print(ctx, info2, mask2.shape, float(mask2.mean()), bool(torch.isfinite(ed2["samples"]).all()))
