"""Self-attention patches that give every frame a video-wide context (STEM-SA or a baseline).

Pure PyTorch: the objects here are the callables ComfyUI's ModelPatcher calls, but they only read
plain dict entries of `extra_options`, so they are testable without ComfyUI.

Two hook points (DESIGN.md section 3):
- attn1_patch  `patch(n, context, value, extra_options) -> (n, context, value)` runs before the q/k/v
  projections. The paper's STEM returns the bases mu as context and value, so attn1 computes exactly
  K = mu W_K, V = mu W_V (Eq. 7).
- attn1_replace `replace(q, k, v, extra_options) -> out` gets projected q, k, v [B, L, heads*d]; the
  baselines (2-frame, all-frame), the released-code STEM variant (EM on projected keys) and attention
  recording live here.

Batch layout: B = groups * frames, where groups = len(extra_options["cond_or_uncond"]) (cond and
uncond run together when cfg > 1) and the frames of a group are consecutive.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from . import attention as attn
from .em import estimate_bases, released_variant_bases

# The 16 self-attention sites of SD1.5 (block name, block id), in execution order.
SD15_ATTN1_SITES = (
    ("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8),
    ("middle", 0),
    ("output", 3), ("output", 4), ("output", 5), ("output", 6), ("output", 7), ("output", 8),
    ("output", 9), ("output", 10), ("output", 11),
)
LAYER_GROUPS = {
    "all": SD15_ATTN1_SITES,
    "encoder": tuple(s for s in SD15_ATTN1_SITES if s[0] == "input"),
    "middle": (("middle", 0),),
    "decoder": tuple(s for s in SD15_ATTN1_SITES if s[0] == "output"),
}
CONTEXTS = ("stem", "per_frame", "two_frame", "all_frame")
VARIANTS = ("paper", "released")
# Frames attending to all frames at once would need [frames*L, frames*L] scores; chunk query frames.
ALL_FRAME_QUERY_CHUNK = 4


class PatchError(ValueError):
    """A bad setting or a batch the patch cannot treat as one whole video."""


def site_name(site) -> str:
    return f"{site[0]}_{site[1]}"


def parse_layers(spec: str) -> tuple:
    """'all' | 'encoder' | 'middle' | 'decoder' | 'input_1, output_11, ...' (combinable) -> sites."""
    names = {site_name(s): s for s in SD15_ATTN1_SITES}
    chosen = []
    for token in (t.strip().lower() for t in str(spec).replace(";", ",").split(",")):
        if not token:
            continue
        if token in LAYER_GROUPS:
            chosen.extend(LAYER_GROUPS[token])
        elif token in names:
            chosen.append(names[token])
        else:
            raise PatchError(
                f"layers: unknown layer '{token}'. Use 'all', 'encoder', 'middle', 'decoder' or site names "
                f"such as {', '.join(names)}")
    if not chosen:
        raise PatchError("layers: no layer selected; use 'all' for the paper's 16 self-attention layers")
    return tuple(s for s in SD15_ATTN1_SITES if s in set(chosen))


@dataclass(frozen=True)
class STEMSettings:
    """What the patch does. Paper defaults: K=256, R=3, tau=0.05 (released code: tau 0.01, R 5)."""
    context: str = "stem"
    variant: str = "paper"
    num_bases: int = 256
    iterations: int = 3
    tau: float = 0.05
    seed: int = 0
    init: str = "tokens"
    warm_start: bool = False  # bench/bench_r_study.py: warm bases drift from the cold fixed point at the top layer
    chunk_tokens: int | None = None
    layers: tuple = SD15_ATTN1_SITES

    def validated(self) -> "STEMSettings":
        if self.context not in CONTEXTS:
            raise PatchError(f"context must be one of {CONTEXTS}, got '{self.context}'")
        if self.variant not in VARIANTS:
            raise PatchError(f"variant must be one of {VARIANTS}, got '{self.variant}'")
        if self.num_bases < 1:
            raise PatchError(f"num_bases (K) must be >= 1, got {self.num_bases}; the paper uses 256")
        if self.iterations < 0:
            raise PatchError(f"iterations (R) must be >= 0, got {self.iterations}; the paper uses 3")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise PatchError(f"tau must be > 0, got {self.tau}; the paper uses 0.05")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise PatchError(f"chunk_tokens must be >= 1 or unset, got {self.chunk_tokens}")
        return self


@dataclass
class _RunState:
    """Per-run state: warm-start bases and observers. Never shared between clones."""
    warm: dict = field(default_factory=dict)       # key -> (sigma, direction, bases)
    observers: list = field(default_factory=list)  # callables(event: dict)
    warned_clamp: bool = False
    replay: list | None = None  # [(sigma, {site: bases [G, K, C]})] recorded by an inversion


class VideoAttentionPatch:
    """attn1_patch of one model clone; also owns that clone's attn1_replace callables.

    `expected_frames` (transformer_options["stem_video_frames"], set by STEMInvert) lets the patch
    refuse a batch that does not hold the whole video instead of silently running per-chunk EM.
    """

    def __init__(self, settings: STEMSettings):
        self.settings = settings.validated()
        self.state = _RunState()

    # ComfyUI deep-copies model_options on every clone(): give the copy the same settings and a
    # fresh, empty run state (no tensors duplicated, nothing leaks into another branch).
    def __deepcopy__(self, memo):
        return VideoAttentionPatch(self.settings)

    def to(self, device_or_dtype):
        # holds no weights; warm-start bases are re-created on the device of the features
        return self

    def reset(self):
        self.state = _RunState()

    def add_observer(self, fn):
        self.state.observers.append(fn)

    def set_replay(self, table):
        """Use recorded bases instead of running EM: table [(sigma, {site: bases [G, K, C]})].

        Each call takes the entry with the nearest sigma (log scale). Sampling evaluates the UNet at the
        sigmas the inversion visited, so reconstruction reads exactly the inversion's context."""
        self.state.replay = sorted(table, key=lambda e: e[0]) if table else None

    def _replayed(self, site, sigma, groups, like):
        if not self.state.replay or sigma is None:
            return None
        target = math.log(max(sigma, 1e-12))
        _, by_site = min(self.state.replay, key=lambda e: abs(math.log(max(e[0], 1e-12)) - target))
        bases = by_site.get(site)
        if bases is None or bases.shape[-1] != like.shape[-1]:
            return None
        if bases.shape[0] != groups:
            if bases.shape[0] != 1:
                return None
            bases = bases.expand(groups, *bases.shape[1:])  # the source's bases serve cond and uncond alike
        return bases.to(device=like.device, dtype=like.dtype)

    @property
    def needs_replace(self) -> bool:
        s = self.settings
        return s.context in ("two_frame", "all_frame") or (s.context == "stem" and s.variant == "released")

    @property
    def uses_context_patch(self) -> bool:
        return self.settings.context == "stem" and self.settings.variant == "paper"

    def replace_for(self, site) -> "AttentionReplace":
        return AttentionReplace(self, site)

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _site(extra_options):
        block = extra_options.get("block")
        if block is None:
            return None
        return (block[0], int(block[1]))

    def _groups_frames(self, batch: int, extra_options) -> tuple[int, int]:
        groups = max(1, len(extra_options.get("cond_or_uncond", [0])))
        if batch % groups:
            raise PatchError(f"batch {batch} is not divisible by {groups} conditioning groups")
        frames = batch // groups
        expected = extra_options.get("stem_video_frames")
        if expected is not None and frames != expected:
            raise PatchError(
                f"the UNet saw {frames} frames in one call but the video has {expected}; STEM needs every frame "
                f"in one statistic. Lower the frame count or resolution so the whole video fits in one batch "
                f"(or use chunk_tokens to bound EM memory)")
        return groups, frames

    def _sigma(self, extra_options) -> float | None:
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return None
        return float(sigmas.reshape(-1)[0]) if torch.is_tensor(sigmas) else float(sigmas)

    def _warm_bases(self, key, sigma):
        """Bases of the previous step of the same monotone sigma run, else None (cold start)."""
        if not self.settings.warm_start or sigma is None or key not in self.state.warm:
            return None
        prev_sigma, direction, bases = self.state.warm[key]
        step = sigma - prev_sigma
        if step == 0 or (direction != 0 and (step > 0) != (direction > 0)):
            return None  # a new run started (sigma went back): never reuse another run's bases
        return bases

    def _remember(self, key, sigma, bases):
        if sigma is None or not self.settings.warm_start:
            return
        direction = 0
        if key in self.state.warm:
            prev_sigma = self.state.warm[key][0]
            direction = 0 if sigma == prev_sigma else (1 if sigma > prev_sigma else -1)
            old_direction = self.state.warm[key][1]
            if old_direction != 0 and direction != old_direction:
                direction = 0
        self.state.warm[key] = (sigma, direction, bases.detach())

    def _effective_bases(self, tokens: int) -> int:
        """K clamped to the video's token count, with one warning per run instead of one per layer."""
        k = self.settings.num_bases
        if k > tokens:
            if not self.state.warned_clamp:
                logging.warning("[STEM] num_bases %d exceeds the %d tokens of the video at a layer; using %d bases "
                                "there (K >= tokens reproduces all-frame attention)", k, tokens, tokens)
                self.state.warned_clamp = True
            return tokens
        return k

    def _notify(self, **event):
        for fn in self.state.observers:
            fn(event)

    # -- attn1_patch: the paper's STEM-SA ------------------------------------------------------
    def __call__(self, n, context, value, extra_options):
        """n [B, L, C] (normed hidden states of all frames) -> (n, mu [B, K, C], mu [B, K, C])."""
        site = self._site(extra_options)
        if not self.uses_context_patch or site not in self.settings.layers:
            return n, context, value
        if context is not n:
            return n, context, value  # a cross-attention-like attn1 (not the case in SD1.5)
        b, tokens, channels = n.shape
        groups, frames = self._groups_frames(b, extra_options)
        x = n.reshape(groups, frames * tokens, channels)
        sigma = self._sigma(extra_options)
        key = (site, tuple(extra_options.get("cond_or_uncond", [0])), b, tokens)
        s = self.settings
        bases = self._replayed(site, sigma, groups, n)
        if bases is None:
            num_bases = self._effective_bases(x.shape[1])
            result = estimate_bases(x, num_bases, s.iterations, s.tau, seed=s.seed, init=s.init,
                                    init_bases=self._warm_bases(key, sigma), chunk_tokens=s.chunk_tokens)
            bases = result.bases  # [groups, K, C]
            self._remember(key, sigma, bases)
        self._notify(kind="bases", site=site, sigma=sigma, bases=bases, frames=frames, groups=groups)
        k = bases.shape[1]
        mu = bases[:, None].expand(groups, frames, k, channels).reshape(b, k, channels)
        return n, mu, mu


class AttentionReplace:
    """attn1_replace for one site: q, k, v [B, L, heads*d] -> out [B, L, heads*d]."""

    def __init__(self, patch: VideoAttentionPatch, site):
        self.patch = patch
        self.site = tuple(site)

    def to(self, device_or_dtype):
        return self

    def __call__(self, q, k, v, extra_options):
        p, s = self.patch, self.patch.settings
        heads = int(extra_options["n_heads"])
        groups, frames = p._groups_frames(q.shape[0], extra_options)
        if s.context == "two_frame":
            return attn.attention(q, attn.two_frame_context(k, frames), attn.two_frame_context(v, frames), heads)
        if s.context == "all_frame":
            return attn.all_frame_attention(q, k, v, frames, heads, frame_chunk=ALL_FRAME_QUERY_CHUNK)
        if s.context == "stem" and s.variant == "released":
            return self._released_stem(q, k, v, heads, groups, frames, extra_options)
        # paper STEM (k, v already are the projected bases) or per-frame: plain attention
        return attn.attention(q, k, v, heads)

    def _released_stem(self, q, k, v, heads, groups, frames, extra_options):
        """The authors' released code: EM per head on projected keys; values weighted alike."""
        p, s = self.patch, self.patch.settings
        b, tokens, inner = k.shape
        d = inner // heads

        def per_head(t):  # [B, L, heads*d] -> [groups*heads, frames*L, d]
            return t.reshape(groups, frames, tokens, heads, d).permute(0, 3, 1, 2, 4).reshape(
                groups * heads, frames * tokens, d)

        sigma = p._sigma(extra_options)
        key = (self.site, tuple(extra_options.get("cond_or_uncond", [0])), b, tokens, "released")
        num_bases = p._effective_bases(frames * tokens)
        k_bases, v_bases = released_variant_bases(per_head(k), per_head(v), num_bases, max(1, s.iterations), s.tau,
                                                  seed=s.seed, init_bases=p._warm_bases(key, sigma))
        p._remember(key, sigma, k_bases)

        def merge(t):  # [groups*heads, K, d] -> [groups, K, heads*d]
            kk = t.shape[1]
            return t.reshape(groups, heads, kk, d).permute(0, 2, 1, 3).reshape(groups, kk, heads * d)

        return attn.stem_attention(q, merge(k_bases), merge(v_bases), frames, heads)


def install_plan(settings: STEMSettings):
    """(attn1_patch, {site: attn1_replace}) for a model clone with these settings (no replaces for the
    paper's STEM and per_frame, whose attention ComfyUI computes itself)."""
    patch = VideoAttentionPatch(settings)
    replaces = {site: patch.replace_for(site) for site in settings.layers} if patch.needs_replace else {}
    return patch, replaces
