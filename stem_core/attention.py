"""Self-attention for video: the maths of STEM-SA and its baselines, and the patch objects ComfyUI calls.

Tensors follow ComfyUI's projected layout: q, k, v are [B, L, heads * d] (heads concatenated in the last
dim). Video batches are frame-major per group: [groups * frames, L, D], row ``g * frames + n`` is frame
n of group g (a group is the cond or the uncond half of a batch; ``extra_options["cond_or_uncond"]``
lists them, and ComfyUI runs them together or apart).

Attention modes (which keys/values each frame's queries see):
- ``per_frame`` (1-frame, plain 2D DDIM): :func:`attention` on the batch as is.
- ``two_frame`` (FateZero's spatio-temporal attention): the middle frame, :func:`middle_frame_context`, at the
  layers FateZero applies it to (sites.two_frame_sites: at least 640 channels); per-frame elsewhere.
- ``all_frame`` (extended attention): every frame of its group, :func:`all_frame_attention`.
- ``stem`` (paper Eq. 7): its group's K bases, estimated by EM over ALL frames' tokens (em.py).

The patch objects (:class:`VideoAttentionPatch`, :class:`BaselineAttention`) only read plain dict
entries of ``extra_options``, so they run without ComfyUI. Two hook points (ComfyUI's ModelPatcher):
- attn1_patch ``patch(n, context, value, extra_options) -> (n, context, value)`` before the q/k/v
  projections: the paper's STEM returns the bases mu as context and value, so attn1 computes exactly
  K = mu W_K, V = mu W_V (Eq. 7).
- attn1_replace ``replace(q, k, v, extra_options) -> out`` with projected q, k, v: the baselines and the
  released-code STEM variant (EM on projected keys).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .em import Workspace, check_em_settings, estimate_bases, released_variant_bases
from .errors import STEMError
from .sites import SD15_KEYS, site_of, two_frame_sites

MODES = ("stem", "per_frame", "two_frame", "all_frame")
VARIANTS = ("paper", "released")
# Frames attending to all frames at once would need [frames*L, frames*L] scores; chunk query frames.
ALL_FRAME_QUERY_CHUNK = 4
# transformer_options key: sites whose EM responsibilities an attention store records (set by its node), and
# the extra_options key under which the STEM patch hands them to the store's patch of the same call.
RECORD_RESPONSIBILITIES = "stem_record_responsibilities"
# The authors' released code: tau 0.01, 5 EM iterations, EM over the frames of one 8-frame UNet batch
# (TokenFlow-Edit/tokenflow_utils.py em(); batch_size 8 in its configs).
RELEASED_TAU, RELEASED_ITERATIONS, RELEASED_BATCH_FRAMES = 0.01, 5, 8
RESPONSIBILITIES = "stem_responsibilities"





# ----------------------------------------------------------------------------------------------------
# validation


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> None:
    _check_positive_int(heads, "heads")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D [batch, tokens, heads*dim_head], got shape {tuple(t.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"q, k, v must have the same batch size, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of tokens, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must have the same channel count, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    for name, t in (("q", q), ("v", v)):
        if t.shape[2] % heads != 0:
            raise ValueError(f"{name} channels ({t.shape[2]}) must be divisible by heads ({heads})")


def _groups_of(batch: int, frames, name: str) -> int:
    _check_positive_int(frames, "frames")
    if batch % frames != 0:
        raise ValueError(
            f"{name} batch size {batch} is not a multiple of frames={frames}; the attention patch must see "
            "all frames of every cond/uncond group (laid out frame-major) in one call"
        )
    return batch // frames


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, heads*d] -> [B, heads, L, d]"""
    b, l, c = t.shape
    return t.view(b, l, heads, c // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, L, d] -> [B, L, heads*d]"""
    b, h, l, d = t.shape
    return t.transpose(1, 2).reshape(b, l, h * d)


# ----------------------------------------------------------------------------------------------------
# plain attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax(q k^T / sqrt(d)) v with torch's fused scaled_dot_product_attention.

    q [B, Lq, heads*d], k [B, Lk, heads*d], v [B, Lk, heads*dv] -> [B, Lq, heads*dv].
    """
    _check_qkv(q, k, v, heads)
    out = F.scaled_dot_product_attention(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads))
    return _merge_heads(out)


def attention_with_probs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`attention` but also returns the attention probabilities (for an attention store).

    q [B, Lq, heads*d], k [B, Lk, heads*d], v [B, Lk, heads*dv] ->
    (out [B, Lq, heads*dv], probs [B, heads, Lq, Lk]), both in q.dtype; the softmax runs in float32
    (float64 stays float64) so fp16 scores cannot overflow.
    """
    _check_qkv(q, k, v, heads)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh = _split_heads(q, heads).to(compute)
    kh = _split_heads(k, heads).to(compute)
    vh = _split_heads(v, heads).to(compute)
    scale = 1.0 / math.sqrt(qh.shape[-1])
    probs = torch.matmul(qh, kh.transpose(-1, -2)).mul_(scale).softmax(dim=-1)
    out = torch.matmul(probs, vh)
    return _merge_heads(out).to(q.dtype), probs.to(q.dtype)


# ----------------------------------------------------------------------------------------------------
# video contexts


def middle_frame_context(kv: torch.Tensor, frames: int) -> torch.Tensor:
    """FateZero's spatio-temporal context as its code runs it: every frame attends to the MIDDLE frame only.

    kv [groups*frames, L, D] (projected k or v, frame-major per group) -> [groups*frames, L, D] where every row of
    group g is kv[g*frames + (frames-1)//2]. FateZero's zero-shot configs set SparseCausalAttention_index ['mid'],
    for which ``SparseCausalAttention.forward`` (video_diffusion/models/attention.py) gathers the keys and values
    of frame int(clip_length - 1) // 2 for every frame, its own tokens not included. (The STEM paper's Eq. 6
    describes FateZero as [own frame, middle frame]; the code is what is matched here.)
    """
    if kv.dim() != 3:
        raise ValueError(f"kv must be 3-D [groups*frames, tokens, channels], got shape {tuple(kv.shape)}")
    groups = _groups_of(kv.shape[0], frames, "kv")
    _, tokens, channels = kv.shape
    middle = (frames - 1) // 2
    per_group = kv.view(groups, frames, tokens, channels)
    return per_group[:, middle:middle + 1].expand(groups, frames, tokens, channels).reshape(kv.shape)


def all_frame_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    frames: int,
    heads: int,
    frame_chunk: Optional[int] = None,
) -> torch.Tensor:
    """Extended attention: every frame's queries attend to the keys/values of ALL frames of its group.

    q [groups*frames, Lq, D], k [groups*frames, Lk, D], v [groups*frames, Lk, Dv] -> [groups*frames, Lq, Dv].
    Since all frames of a group share one key set, the group's queries are concatenated into one
    sequence [groups, frames*Lq, D] and the keys into [groups, frames*Lk, D] (a view, no per-frame copy
    of the keys). ``frame_chunk`` limits how many frames' queries go through SDPA at once, bounding the
    score matrix at [groups, heads, frame_chunk*Lq, frames*Lk] on backends that materialise it.
    """
    _check_qkv(q, k, v, heads)
    groups = _groups_of(q.shape[0], frames, "q")
    lq, lk = q.shape[1], k.shape[1]
    q_seq = q.reshape(groups, frames * lq, q.shape[2])
    k_seq = k.reshape(groups, frames * lk, k.shape[2])
    v_seq = v.reshape(groups, frames * lk, v.shape[2])
    if frame_chunk is not None:
        _check_positive_int(frame_chunk, "frame_chunk")
    if frame_chunk is None or frame_chunk >= frames:
        out = attention(q_seq, k_seq, v_seq, heads)
    else:
        step = frame_chunk * lq
        out = torch.cat(
            [attention(q_seq[:, start : start + step], k_seq, v_seq, heads) for start in range(0, frames * lq, step)],
            dim=1,
        )
    return out.reshape(groups * frames, lq, v.shape[2])


def stem_attention(
    q: torch.Tensor, k_bases: torch.Tensor, v_bases: torch.Tensor, frames: int, heads: int
) -> torch.Tensor:
    """STEM-SA (paper Eq. 7): each frame's queries attend to its group's projected bases.

    q [groups*frames, L, D], k_bases [groups, K, D] (= mu W_K), v_bases [groups, K, Dv] (= mu W_V)
    -> [groups*frames, L, Dv]. The bases are shared by all frames of a group, so the group's queries
    are run as one sequence [groups, frames*L, D] instead of copying the bases per frame.
    """
    if q.dim() != 3:
        raise ValueError(f"q must be 3-D [groups*frames, tokens, channels], got shape {tuple(q.shape)}")
    groups = _groups_of(q.shape[0], frames, "q")
    for name, t in (("k_bases", k_bases), ("v_bases", v_bases)):
        if t.dim() != 3 or t.shape[0] != groups:
            raise ValueError(
                f"{name} must be [groups, K, channels] with groups = q batch / frames = {groups}, "
                f"got shape {tuple(t.shape)}"
            )
    _, tokens, channels = q.shape
    out = attention(q.reshape(groups, frames * tokens, channels), k_bases, v_bases, heads)
    return out.reshape(groups * frames, tokens, v_bases.shape[2])


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head in float32: q [B, Lq, heads*d], k [B, Lk, heads*d] -> [B, heads, Lq, Lk]."""
    qh = _split_heads(q, heads).float()
    kh = _split_heads(k, heads).float()
    return torch.matmul(qh, kh.transpose(-1, -2)).mul_(1.0 / math.sqrt(qh.shape[-1])).softmax(-1)


def apply_probs(p: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """p [B, heads, Lq, Lk] times v [B, Lk, heads*dv] -> [B, Lq, heads*dv] in v's dtype."""
    out = torch.matmul(p.float(), _split_heads(v, heads).float())
    return _merge_heads(out).to(v.dtype)


def context_for_mode(kv: torch.Tensor, frames: int, mode: str, site=None) -> torch.Tensor:
    """The keys (or values) each frame attends to under an attention mode at a site, materialised per frame:
    kv [groups*frames, L, D] -> [groups*frames, Lk, D] (Lk = L per_frame and two_frame, frames*L all_frame).
    Used where maps must be read or replaced per frame (the FateZero store)."""
    if mode == "two_frame":
        return middle_frame_context(kv, frames) if site in two_frame_sites() else kv
    if mode == "all_frame":
        b, length, d = kv.shape
        g = b // frames
        return kv.reshape(g, 1, frames * length, d).expand(g, frames, frames * length, d).reshape(b, frames * length, d)
    return kv


# ----------------------------------------------------------------------------------------------------
# batch layout of an attention call


def video_batch(batch: int, extra_options) -> Tuple[list, int]:
    """(cond_or_uncond list, frames per group) of one attention call, refusing a call that does not hold
    the whole video: a context-window call (``extra_options["context_window"]``, set by current ComfyUI's
    context windows) or, when the video length is known (``extra_options["stem_video_frames"]``), any other
    frame count. STEM's bases and the stores are statistics of ALL frames."""
    window = extra_options.get("context_window")
    if window is not None:
        # current ComfyUI's context windows (model_options["context_handler"]) set this for each window call
        frames = getattr(window, "index_list", None)
        raise STEMError(
            f"the sampler runs the UNet on context windows ({len(frames) if frames is not None else '?'} frames per "
            f"call), but STEM's bases and the FateZero / TokenFlow stores are statistics of every frame of the video "
            f"at once", input_name="model",
            fix="remove the Context Windows node from the model's path; to bound memory load fewer frames or a "
                "smaller size, and set chunk_tokens on STEM Video Attention")
    cond_or_uncond = list(extra_options.get("cond_or_uncond", [0]))
    groups = max(1, len(cond_or_uncond))
    if batch % groups:
        raise STEMError(f"batch {batch} is not divisible by {groups} conditioning groups")
    frames = batch // groups
    expected = extra_options.get("stem_video_frames")
    if expected is not None and frames != int(expected):
        raise STEMError(
            f"the UNet saw {frames} frames in one call but the video has {expected}; STEM needs every frame in "
            f"one batch. Context windows and batch splitting (e.g. VideoHelperSuite's Meta Batch) hand the model "
            f"part of the video: connect the whole video, or lower the frame count or resolution so it fits "
            f"(chunk_tokens bounds EM memory)")
    return cond_or_uncond, frames


def group_rows(group_index: int, frames: int) -> slice:
    """Rows of group ``group_index`` in a frame-major batch."""
    return slice(group_index * frames, (group_index + 1) * frames)


def sigma_of(extra_options) -> Optional[float]:
    """The sigma of an attention call (ComfyUI puts the batch's sigmas in extra_options)."""
    s = extra_options.get("sigmas")
    if s is None:
        return None
    return float(s.reshape(-1)[0]) if torch.is_tensor(s) else float(s)


# ----------------------------------------------------------------------------------------------------
# the patch objects


@dataclass(frozen=True)
class VideoAttentionSettings:
    """What the video attention patch does. Paper defaults: K=256, R=3, tau=0.05 (released code: tau 0.01, R 5)."""
    mode: str = "stem"
    variant: str = "paper"
    num_bases: int = 256
    iterations: int = 3
    tau: float = 0.05
    seed: int = 0
    init: str = "tokens"
    warm_start: bool = False  # bench/bench_r_study.py: warm bases drift from the cold fixed point at the top layer
    chunk_tokens: Optional[int] = None
    layers: tuple = SD15_KEYS
    normalize: bool = False  # paper variant: E-step on L2-normalised X and mu (the paper's Eq. 8-9 do not)

    @property
    def effective_tau(self) -> float:
        return RELEASED_TAU if self.variant == "released" else self.tau

    @property
    def effective_iterations(self) -> int:
        return RELEASED_ITERATIONS if self.variant == "released" else self.iterations

    def validated(self) -> "VideoAttentionSettings":
        if self.mode not in MODES:
            raise STEMError(f"must be one of {MODES}, got '{self.mode}'", input_name="attention_context")
        if self.variant not in VARIANTS:
            raise STEMError(f"must be one of {VARIANTS}, got '{self.variant}'", input_name="variant")
        check_em_settings(self.num_bases, self.iterations, self.tau, self.init)
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise STEMError(f"must be >= 1 or 0 for automatic, got {self.chunk_tokens}", input_name="chunk_tokens")
        return self

    @property
    def uses_bases_as_context(self) -> bool:
        """The paper's STEM-SA: the attn1_patch hands the bases to ComfyUI's own attention."""
        return self.mode == "stem" and self.variant == "paper"

    @property
    def needs_replace(self) -> bool:
        """Modes whose attention is computed by our attn1_replace instead of ComfyUI's."""
        return self.mode in ("two_frame", "all_frame") or (self.mode == "stem" and self.variant == "released")


@dataclass
class _RunState:
    """Per-run state: warm-start bases and observers. Never shared between clones."""
    warm: dict = field(default_factory=dict)       # key -> (sigma, direction, bases)
    workspace: Workspace = field(default_factory=Workspace)  # the E-step's logits buffer, reused by every layer
    observers: list = field(default_factory=list)  # callables(event: dict)
    warned_clamp: bool = False
    replay: Optional[list] = None  # [(sigma, {site: bases [G, K, C]})] recorded by an inversion


class VideoAttentionPatch:
    """attn1_patch of one model clone; also owns that clone's attn1_replace callables.

    ``extra_options["stem_video_frames"]`` (set by the inversion) makes the patch refuse a batch that
    does not hold the whole video instead of silently running per-chunk EM.
    """

    def __init__(self, settings: VideoAttentionSettings):
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

    def replace_for(self, site) -> "BaselineAttention":
        return BaselineAttention(self, site)

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

    def effective_bases(self, tokens: int) -> int:
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

    def __call__(self, n, context, value, extra_options):
        """The paper's STEM-SA: n [B, L, C] (normed hidden states of all frames) -> (n, mu [B, K, C], mu)."""
        site = site_of(extra_options)
        if not self.settings.uses_bases_as_context or site not in self.settings.layers:
            return n, context, value
        if context is not n:
            return n, context, value  # a cross-attention-like attn1 (not the case in SD1.5)
        b, tokens, channels = n.shape
        cond_or_uncond, frames = video_batch(b, extra_options)
        groups = len(cond_or_uncond) or 1
        x = n.reshape(groups, frames * tokens, channels)
        sigma = sigma_of(extra_options)
        key = (site, tuple(cond_or_uncond), b, tokens)
        s = self.settings
        bases = self._replayed(site, sigma, groups, n)
        if bases is None:
            # An attention store records the responsibilities of the LAST E-step (those that built the bases);
            # they are handed on in-band: ComfyUI passes one extra_options dict to every attn1 patch of a call.
            keep = site in extra_options.get(RECORD_RESPONSIBILITIES, ())
            result = estimate_bases(x, self.effective_bases(x.shape[1]), s.iterations, s.tau, seed=s.seed,
                                    init=s.init, init_bases=self._warm_bases(key, sigma),
                                    chunk_tokens=s.chunk_tokens, normalize=s.normalize,
                                    return_responsibilities=keep, workspace=self.state.workspace)
            bases = result.bases  # [groups, K, C]
            if keep:
                extra_options[RESPONSIBILITIES] = result.responsibilities  # [groups, frames * L, K]
            self._remember(key, sigma, bases)
        self._notify(kind="bases", site=site, sigma=sigma, bases=bases, frames=frames, groups=groups)
        k = bases.shape[1]
        mu = bases[:, None].expand(groups, frames, k, channels).reshape(b, k, channels)
        return n, mu, mu


class BaselineAttention:
    """attn1_replace for one site of a VideoAttentionPatch: q, k, v [B, L, heads*d] -> out [B, L, heads*d]."""

    def __init__(self, patch: VideoAttentionPatch, site):
        self.patch = patch
        self.site = tuple(site)

    def to(self, device_or_dtype):
        return self

    def __call__(self, q, k, v, extra_options):
        s = self.patch.settings
        heads = int(extra_options["n_heads"])
        cond_or_uncond, frames = video_batch(q.shape[0], extra_options)
        if s.mode == "two_frame":
            if self.site not in two_frame_sites():
                return attention(q, k, v, heads)
            return attention(q, middle_frame_context(k, frames), middle_frame_context(v, frames), heads)
        if s.mode == "all_frame":
            return all_frame_attention(q, k, v, frames, heads, frame_chunk=ALL_FRAME_QUERY_CHUNK)
        if s.mode == "stem" and s.variant == "released":
            return self._released_stem(q, k, v, heads, len(cond_or_uncond) or 1, frames, extra_options)
        # paper STEM (k, v already are the projected bases) or per-frame: plain attention
        return attention(q, k, v, heads)

    def _released_stem(self, q, k, v, heads, groups, frames, extra_options):
        """The authors' released code: EM per head on the projected keys of each consecutive 8-frame batch (the
        last one shorter), values weighted alike, each batch's frames attending to their batch's bases."""
        p, s = self.patch, self.patch.settings
        b, tokens, inner = k.shape
        d = inner // heads
        sigma = sigma_of(extra_options)
        per_group = [t.reshape(groups, frames, tokens, inner) for t in (q, k, v)]
        out = torch.empty(groups, frames, tokens, v.shape[-1], dtype=v.dtype, device=v.device)

        def per_head(t, n):  # [groups, n, L, heads*d] -> [groups*heads, n*L, d]
            return t.reshape(groups, n, tokens, heads, d).permute(0, 3, 1, 2, 4).reshape(groups * heads, n * tokens, d)

        def merge(t):  # [groups*heads, K, d] -> [groups, K, heads*d]
            kk = t.shape[1]
            return t.reshape(groups, heads, kk, d).permute(0, 2, 1, 3).reshape(groups, kk, heads * d)

        for start in range(0, frames, RELEASED_BATCH_FRAMES):
            sl = slice(start, min(start + RELEASED_BATCH_FRAMES, frames))
            n = sl.stop - sl.start
            qb, kb, vb = (t[:, sl] for t in per_group)
            key = (self.site, tuple(extra_options.get("cond_or_uncond", [0])), b, tokens, "released", start)
            k_bases, v_bases = released_variant_bases(per_head(kb, n), per_head(vb, n), p.effective_bases(n * tokens),
                                                      s.effective_iterations, s.effective_tau, seed=s.seed,
                                                      init_bases=p._warm_bases(key, sigma))
            p._remember(key, sigma, k_bases)
            out[:, sl] = stem_attention(qb.reshape(groups * n, tokens, inner), merge(k_bases), merge(v_bases), n,
                                        heads).reshape(groups, n, tokens, -1)
        return out.reshape(b, tokens, -1)


def install_plan(settings: VideoAttentionSettings):
    """(attn1_patch, {site: attn1_replace}) for a model clone with these settings (no replaces for the
    paper's STEM and per_frame, whose attention ComfyUI computes itself)."""
    patch = VideoAttentionPatch(settings)
    replaces = {site: patch.replace_for(site) for site in settings.layers} if settings.needs_replace else {}
    return patch, replaces
