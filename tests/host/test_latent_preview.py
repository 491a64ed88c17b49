"""Latent previews while STEM inverts and edits, in-process with the tiny model: with ComfyUI's preview method set
(what `--preview-method auto` does; latent2rgb here, as no TAESD decoder exists), every step of STEM Invert, STEM
TokenFlow Edit and STEM FateZero Edit sends one progress update carrying a preview image of the current prediction
(ComfyUI's latent_preview.prepare_callback, the same path as core samplers); with previews off none is sent."""
import numpy as np
import pytest
import torch

from tests.host.test_fatezero_edit import edit as fatezero_edit
from tests.host.test_fatezero_edit import encode, invert_with_store, load_clip

STEPS = 3


@pytest.fixture
def previews_on(comfy_host):
    from comfy.cli_args import LatentPreviewMethod, args
    old = args.preview_method
    args.preview_method = LatentPreviewMethod.Latent2RGB
    yield
    args.preview_method = old


@pytest.fixture
def updates(comfy_host):
    import comfy.utils
    seen = []
    # ComfyUI 2025+ also passes node_id= to the hook
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview=None, *a, **kw: seen.append((value, total,
                                                                                                     preview)))
    yield seen
    comfy.utils.set_progress_bar_global_hook(None)


@pytest.fixture(scope="module")
def source(comfy_host, tiny, clips):
    latent, cond = encode(comfy_host, tiny, load_clip(clips, 4, 64), "a wolf walking in the snow")
    return latent, cond


def _check(updates, steps, latent_hw):
    assert [(v, t) for v, t, _ in updates] == [(i, steps) for i in range(1, steps + 1)]
    pictures = []
    for _, _, preview in updates:
        assert preview is not None, "a step without a preview image"
        fmt, image, max_side = preview
        assert fmt == "JPEG" and image.size == (latent_hw[1], latent_hw[0]) and max_side > 0  # latent2rgb: latent size
        pictures.append(np.asarray(image.convert("RGB"), np.float32))
    assert all(p.std() > 0 for p in pictures)
    return pictures


def test_invert_and_tokenflow_send_previews(node, tiny, source, previews_on, updates):
    model, clip, _ = tiny
    latent, cond = source
    stem = node("STEMBasisEstimate").patch(model, "stem", 16, 2, 0.05, 0, "paper", "all", True, "tokens", 0)[0]
    with torch.no_grad():
        _, traj, _ = node("STEMInvert").invert(stem, latent, cond, STEPS)
        inversion = _check(list(updates), traj.steps, latent["samples"].shape[-2:])
        updates.clear()
        target = node("CLIPTextEncode").encode(clip, "a marble sculpture of a wolf")[0]
        node("STEMTokenFlowEdit").edit(stem, traj, target, cond, 7.5, 0.8, 0.5, 4, 1)
    editing = _check(list(updates), traj.steps, latent["samples"].shape[-2:])
    # each step previews its own prediction (a stale or fixed latent would give one picture)
    for pictures in (inversion, editing):
        assert all(float(np.abs(a - b).max()) > 0 for a, b in zip(pictures, pictures[1:]))


def test_fatezero_sends_previews(node, tiny, source, previews_on, updates):
    model, clip, _ = tiny
    latent, cond = source
    with torch.no_grad():
        patched, _, traj = invert_with_store(node, model, latent, cond, "stem", STEPS)
        updates.clear()
        fatezero_edit(node, patched, traj, clip, target="a marble sculpture of a wolf walking in the snow")
    _check(list(updates), traj.steps, latent["samples"].shape[-2:])


def test_no_previews_when_off(node, tiny, source, updates):
    from comfy.cli_args import LatentPreviewMethod, args
    assert args.preview_method == LatentPreviewMethod.NoPreviews  # the pinned host's default
    model, _, _ = tiny
    latent, cond = source
    with torch.no_grad():
        node("STEMInvert").invert(model, latent, cond, STEPS)
    assert len(updates) >= STEPS and all(p is None for _, _, p in updates)
