"""TokenFlow editing maths (pure PyTorch, no ComfyUI import).

TokenFlow (Geyer et al. 2023) edits a video with an image diffusion model by denoising a few keyframes
jointly and propagating their self-attention outputs to every other frame along nearest-neighbour
correspondences of the *source* video's diffusion features. STEM-TokenFlow is the same editing process
started from (and guided by) a STEM inversion instead of per-frame DDIM inversion.

What one editing step does (batch layout ``[source | uncond | cond]``, each group ``n`` frames, see
:class:`TokenFlowHooks`):

1. Keyframes: one random frame per chunk of ``chunk_size`` frames (:func:`select_keyframes`, seeded,
   a shorter last chunk gets its own keyframe). The keyframes go through the UNet together; in every
   self-attention layer the source group attends per frame and each edit group uses extended
   attention (every keyframe's queries see the keys/values of all keyframes of its group). The layer's
   source-branch input features and all groups' attention outputs are kept.
2. Propagation: every other frame goes through the UNet in passes of at most ``chunk_size`` frames.
   Its self-attention output is not computed from q, k, v: each token takes the output of its nearest
   neighbour (cosine similarity of the source branch's normalised attention inputs,
   :func:`nearest_neighbors`) in its two neighbouring keyframes, blended by :func:`blend_plan`.
3. Plug-and-play injection from the source branch (re-run on the inverted latents with the source
   prompt): the residual-branch features of one decoder ResBlock for the first ``pnp_f_t`` of the
   steps, and the self-attention queries and keys of 8 decoder layers for the first ``pnp_attn_t``
   (:class:`InjectionSchedule`).

Blend formula (:func:`blend_plan`), frame f between keyframes at positions p- <= f <= p+:

- ``"paper"`` (default): ``out_f = w * out[p-][nn-] + (1 - w) * out[p+][nn+]`` with
  ``w = (p+ - f) / (p+ - p-)``: linear in the distance to the actual keyframes, so a keyframe gets
  exactly its own output (w = 1 at f = p-) and frames before the first / after the last keyframe
  copy their single neighbour (w = 1).
- ``"released"``: the authors' code. Frame f in chunk c pairs the keyframe of chunk c (a) with the
  one of chunk c - 1 (b); distances are measured to the chunk CENTRES ``p_a = c*B + B//2`` and
  ``p_b = (c-1)*B + B//2``; ``w_a = sigmoid(d_b / (d_a + d_b))`` (so w_a lies in [0.5, 0.73]);
  chunk 0 uses its own keyframe only (w = 1).

Where TokenFlow's hooks sit (authors' diffusers names -> ComfyUI's SD1.x/2.x UNet):

- Residual-feature injection, diffusers ``up_blocks[1].resnets[1]`` (second decoder stage, 1280
  channels, 1/16 of the image size) -> ComfyUI ``output_blocks[4][0]`` (a ResBlock; generally
  ``up_blocks[i].resnets[j] -> output_blocks[3*i + j][0]``). The residual branch (after conv2, before
  the skip connection is added) is that ResBlock's ``out_layers``; the glue installs an object patch
  there (``sites.TOKENFLOW_RESIDUAL_MODULE``), :class:`ResidualInjection`, which shares its layers and
  replaces the edit branches' output by the source branch's.
- Query/key injection, diffusers ``up_blocks[1].attentions[1, 2]``, ``up_blocks[2].attentions[0..2]``,
  ``up_blocks[3].attentions[0..2]`` -> ComfyUI attn1 sites ``("output", 4) .. ("output", 11)``
  (``up_blocks[i].attentions[j] -> output_blocks[3*i + j][1]``; ``("output", 3)`` is excluded as in
  TokenFlow: "not in the first block of the lowest resolution").
- Extended keyframe attention and propagation: all 16 attn1 sites (``input`` 1,2,4,5,7,8, ``middle`` 0,
  ``output`` 3..11), through one attn1 pre-projection patch (records the normalised input used for
  nearest neighbours) and 16 attn1 replacements. Everything is installed on a clone; the input MODEL
  is never modified. A STEM attention patch on the incoming MODEL is left out of the clone: as in the
  authors' code, STEM is used for inversion and TokenFlow's own attention for editing.

Memory. Per step the UNet runs one keyframe pass of ``groups * K`` frames (K = ceil(N / chunk_size)
keyframes, groups = 3: source, uncond, cond; 2 when cfg = 1) and then passes of at most
``groups * chunk_size`` frames over the remaining frames. Kept in between: for each of the 16 layers
the keyframes' source features and attention outputs (4 tensors of [K, tokens, channels]; about
90 MB per keyframe for SD1.5 at 512x512 in fp16). Extended attention streams the keyframes' queries
(2 keyframes at a time) against all keyframe keys, so its scores grow like K, not K^2, and nearest
neighbours are scored 1024 tokens at a time. Peak memory therefore is about
``weights + a * N + b * K + c * groups * max(K, chunk_size)``: with the default chunk size 8 it is flat
in the UNet-pass term up to 64 frames and grows linearly (slope ~1/8 of a whole-video batch) beyond,
plus the latents (x, the denoised estimate and the trajectory's N-frame latents, a few MB).
``bench/bench_tokenflow_memory.py`` measures it.

Shapes follow ComfyUI's projected layout: q, k, v ``[groups * n, tokens, heads * dim_head]``, frames of
one group consecutive; attention-input features ``[groups * n, tokens, channels]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from .attention import all_frame_attention, attention
from .errors import STEMError
from .inversion import InversionTrajectory, ddim_step
from .sites import SD15_KEYS, TOKENFLOW_QK_SITES, site_of

__all__ = [
    "TokenFlowSettings",
    "edit_video",
    "chunk_count",
    "select_keyframes",
    "keyframe_schedule",
    "BlendPlan",
    "blend_plan",
    "nearest_neighbors",
    "propagate",
    "injection_step_count",
    "InjectionSchedule",
    "TokenFlowHooks",
    "ResidualInjection",
]

BLEND_MODES = ("paper", "released")
# Extended attention runs this many keyframes' queries through SDPA at once (bounds the score matrix).
KEYFRAME_QUERY_CHUNK = 2
# Nearest-neighbour search scores this many query tokens at once against one keyframe.
NN_QUERY_BLOCK = 1024


# ----------------------------------------------------------------------------------------------------
# keyframes


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise STEMError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def chunk_count(frames: int, chunk_size: int) -> int:
    """Number of chunks of ``chunk_size`` frames covering ``frames`` (the last may be shorter)."""
    _positive_int(frames, "frames")
    _positive_int(chunk_size, "chunk_size")
    return -(-frames // chunk_size)


def select_keyframes(frames: int, chunk_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One uniformly random keyframe inside every chunk ``[c*B, min((c+1)*B, frames))``.

    Returns a LongTensor [chunk_count] of frame indices, ascending (chunk order); the last, possibly
    shorter chunk draws within its own frames. Deterministic for a given generator state.
    """
    chunks = chunk_count(frames, chunk_size)
    starts = torch.arange(chunks, dtype=torch.long) * chunk_size
    sizes = torch.clamp(frames - starts, max=chunk_size)
    u = torch.rand(chunks, generator=generator, dtype=torch.float64)
    offsets = torch.minimum((u * sizes).long(), sizes - 1)
    return starts + offsets


def keyframe_schedule(frames: int, chunk_size: int, steps: int, seed: int) -> torch.Tensor:
    """Keyframes of every step: LongTensor [steps, chunk_count], drawn from one generator seeded with
    ``seed`` (row i = step i, noisiest first). The same arguments always give the same schedule."""
    _positive_int(steps, "steps")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.stack([select_keyframes(frames, chunk_size, g) for _ in range(steps)])


# ----------------------------------------------------------------------------------------------------
# blend weights


@dataclass(frozen=True)
class BlendPlan:
    """How each frame mixes two keyframes: out_f = weight[f] * kf[first[f]] + (1 - weight[f]) * kf[second[f]].

    first, second: LongTensor [frames], indices into the step's keyframe list (slots, not frame ids).
    weight:        float64 tensor [frames] in [0, 1].
    keyframes:     LongTensor [slots], frame index of each slot.
    mode:          "paper" or "released".
    """
    first: torch.Tensor
    second: torch.Tensor
    weight: torch.Tensor
    keyframes: torch.Tensor
    mode: str

    def is_copy_of_keyframe(self, frame: int) -> bool:
        """True when the frame's propagated output is exactly its own keyframe output (paper mode)."""
        slot = int(self.first[frame])
        return (int(self.keyframes[slot]) == frame and float(self.weight[frame]) == 1.0
                and (int(self.second[frame]) == slot))


def blend_plan(frames: int, keyframes, chunk_size: int, mode: str = "paper") -> BlendPlan:
    """Neighbouring keyframes and weights of every frame (formulas in the module docstring).

    keyframes: [chunk_count] ascending frame indices, one per chunk (e.g. from :func:`select_keyframes`).
    """
    if mode not in BLEND_MODES:
        raise STEMError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
    kf = torch.as_tensor(keyframes, dtype=torch.long).reshape(-1)
    chunks = chunk_count(frames, chunk_size)
    if kf.numel() != chunks:
        raise STEMError(f"expected {chunks} keyframes (one per chunk of {chunk_size}), got {kf.numel()}")
    for c in range(chunks):
        lo, hi = c * chunk_size, min((c + 1) * chunk_size, frames)
        if not lo <= int(kf[c]) < hi:
            raise STEMError(f"keyframe {int(kf[c])} of chunk {c} lies outside its frames [{lo}, {hi})")
    f = torch.arange(frames, dtype=torch.long)
    if mode == "paper":
        # slot of the last keyframe at or before f (-1 if none) and of the first at or after f
        prev = torch.searchsorted(kf, f, right=True) - 1
        nxt = torch.searchsorted(kf, f, right=False)
        before_first = prev < 0
        after_last = nxt >= chunks
        prev_c = prev.clamp(min=0)
        nxt_c = nxt.clamp(max=chunks - 1)
        p_prev = kf[prev_c].double()
        p_next = kf[nxt_c].double()
        span = p_next - p_prev
        weight = torch.where(span > 0, (p_next - f.double()) / torch.where(span > 0, span, torch.ones_like(span)),
                             torch.ones_like(span))
        first = torch.where(before_first, nxt_c, prev_c)
        second = torch.where(after_last | before_first, first, nxt_c)
        weight = torch.where(before_first | after_last, torch.ones_like(weight), weight)
        return BlendPlan(first, second, weight, kf, mode)
    # released: own chunk's keyframe (a) and the previous chunk's (b), distances to chunk centres
    c = f // chunk_size
    first = c.clone()
    second = (c - 1).clamp(min=0)
    p_a = (c * chunk_size + chunk_size // 2).double()
    p_b = ((c - 1) * chunk_size + chunk_size // 2).double()
    d_a = (f.double() - p_a).abs()
    d_b = (f.double() - p_b).abs()
    weight = torch.sigmoid(d_b / (d_a + d_b))
    weight = torch.where(c == 0, torch.ones_like(weight), weight)
    return BlendPlan(first, second, weight, kf, mode)


# ----------------------------------------------------------------------------------------------------
# nearest neighbours and propagation


def normalize_keys(keys: torch.Tensor) -> torch.Tensor:
    """Unit-length rows along the last dim (float32 or wider), so that q . k_hat ranks by cosine."""
    compute = torch.float64 if keys.dtype == torch.float64 else torch.float32
    k = keys.to(compute)
    return k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def nearest_neighbors(query: torch.Tensor, keys: torch.Tensor, key_index, block: int = NN_QUERY_BLOCK,
                      keys_normalized: bool = False) -> torch.Tensor:
    """Index of each query token's most cosine-similar token in its frame's keyframe.

    query:     [F, L, C] features of the frames to fill (source branch, normalised attention input).
    keys:      [K, Lk, C] the same features of the K keyframes.
    key_index: [F] which keyframe (0..K-1) each frame is matched against.
    Returns LongTensor [F, L] with values in [0, Lk). The query's own norm does not change the argmax,
    so only the keys are normalised. Memory: one [block, Lk] score matrix at a time.
    """
    if query.dim() != 3 or keys.dim() != 3 or query.shape[-1] != keys.shape[-1]:
        raise STEMError(f"query [F, L, C] and keys [K, Lk, C] expected, got {tuple(query.shape)} and "
                             f"{tuple(keys.shape)}")
    key_index = torch.as_tensor(key_index, dtype=torch.long).reshape(-1)
    if key_index.numel() != query.shape[0]:
        raise STEMError(f"key_index has {key_index.numel()} entries for {query.shape[0]} frames")
    k_hat = keys if keys_normalized else normalize_keys(keys)
    frames, tokens, _ = query.shape
    out = torch.empty(frames, tokens, dtype=torch.long, device=query.device)
    for i in range(frames):
        kt = k_hat[int(key_index[i])].transpose(0, 1)
        for s in range(0, tokens, block):
            scores = query[i, s:s + block].to(kt.dtype) @ kt
            out[i, s:s + block] = scores.argmax(dim=-1)
    return out


def propagate(keyframe_out: torch.Tensor, first, second, weight, idx_first: torch.Tensor,
              idx_second: torch.Tensor) -> torch.Tensor:
    """Gather + blend of keyframe outputs along nearest-neighbour fields:

    ``out[g, f, p] = w_f * kf[g, first_f, idx_first[f, p]] + (1 - w_f) * kf[g, second_f, idx_second[f, p]]``.

    keyframe_out: [G, K, Lk, D] outputs of the K keyframes for G branches.
    first, second: [F] keyframe slots; weight: [F]; idx_first, idx_second: [F, L] token indices.
    Returns [G, F, L, D] in keyframe_out's dtype (the blend itself runs in float32 or wider).
    """
    g, k, lk, d = keyframe_out.shape
    first = torch.as_tensor(first, dtype=torch.long, device=keyframe_out.device).reshape(-1)
    second = torch.as_tensor(second, dtype=torch.long, device=keyframe_out.device).reshape(-1)
    frames, tokens = idx_first.shape
    flat = keyframe_out.reshape(g, k * lk, d)

    def gather(slots, idx):
        global_idx = (slots[:, None] * lk + idx.to(keyframe_out.device)).reshape(-1)
        return flat.index_select(1, global_idx).reshape(g, frames, tokens, d)

    compute = torch.float64 if keyframe_out.dtype == torch.float64 else torch.float32
    w = torch.as_tensor(weight, dtype=compute, device=keyframe_out.device).reshape(1, frames, 1, 1)
    out = gather(first, idx_first).to(compute)
    if bool((w < 1).any()):
        out = w * out + (1 - w) * gather(second, idx_second).to(compute)
    return out.to(keyframe_out.dtype)


# ----------------------------------------------------------------------------------------------------
# injection schedule


def injection_step_count(steps: int, fraction: float) -> int:
    """How many of the first (noisiest) steps inject: floor(steps * fraction), as TokenFlow's
    ``int(n_timesteps * pnp_t)`` (with a tiny tolerance so 0.29 * 100 gives 29)."""
    _positive_int(steps, "steps")
    f = float(fraction)
    if not (0.0 <= f <= 1.0) or math.isnan(f):
        raise STEMError(f"injection fraction must lie in [0, 1], got {fraction}")
    return min(steps, int(math.floor(steps * f + 1e-9)))


@dataclass(frozen=True)
class InjectionSchedule:
    """Which sampling steps (0 = noisiest) copy source features into the edit branches.

    pnp_f_t:    fraction of steps with residual-feature injection (TokenFlow default 0.8).
    pnp_attn_t: fraction of steps with self-attention q/k injection (TokenFlow default 0.5).
    """
    steps: int
    pnp_f_t: float = 0.8
    pnp_attn_t: float = 0.5

    @property
    def residual_steps(self) -> int:
        return injection_step_count(self.steps, self.pnp_f_t)

    @property
    def qk_steps(self) -> int:
        return injection_step_count(self.steps, self.pnp_attn_t)

    def residual(self, step: int) -> bool:
        return step < self.residual_steps

    def qk(self, step: int) -> bool:
        return step < self.qk_steps


# ----------------------------------------------------------------------------------------------------
# hooks (the callables a host installs on its UNet)


class TokenFlowHooks:
    """State and hook logic of one TokenFlow run; the host installs:

    - ``hooks`` itself as an attn1 pre-projection patch ``(n, context, value, extra_options)``: it records
      the normalised attention input n of the current layer (needed for nearest neighbours);
    - ``hooks.replace(site)`` as the attn1 replacement of each of the 16 self-attention sites;
    - ``ResidualInjection`` in place of the residual branch of one decoder ResBlock.

    The driver calls :meth:`start`, then per step :meth:`begin_step`, :meth:`begin_keyframes` before
    the keyframe pass and :meth:`begin_propagation` before each propagation pass, and :meth:`finish`
    at the end (also on errors): afterwards every hook is a pass-through and no tensor is retained.

    Batch layout of every UNet call: ``groups`` groups of n frames, group 0 the source branch (source
    latents, source prompt), groups 1.. the edit branches (uncond, cond; just cond when cfg = 1).

    Memory kept per step: for each of the 16 layers, the keyframes' source features [K, L, C] (unit
    rows) and all groups' attention outputs [groups, K, L, D]: linear in the keyframe count K.
    """

    def __init__(self, sites: Sequence = SD15_KEYS, qk_sites: Sequence = TOKENFLOW_QK_SITES,
                 query_frame_chunk: int = KEYFRAME_QUERY_CHUNK, nn_block: int = NN_QUERY_BLOCK):
        self.sites = tuple(tuple(s) for s in sites)
        self.qk_sites = frozenset(tuple(s) for s in qk_sites)
        self.query_frame_chunk = query_frame_chunk
        self.nn_block = nn_block
        self.active = False
        self.groups = 3
        self.phase = None
        self.inject_qk = False
        self.inject_residual = False
        self._plan = None
        self._captured = None
        self._kf_keys = {}
        self._kf_out = {}
        self.peak_store_bytes = 0
        self.calls = {"keyframes": 0, "propagation": 0}

    # ComfyUI clones deep-copy model_options and move patches with .to(): one run state, no copies.
    def __deepcopy__(self, memo):
        return self

    def to(self, *args, **kwargs):
        return self

    # -- driver API --------------------------------------------------------------------------------
    def start(self, groups: int):
        if groups not in (2, 3):
            raise STEMError(f"groups must be 2 (source, cond) or 3 (source, uncond, cond), got {groups}")
        self.groups = groups
        self.active = True
        self.peak_store_bytes = 0
        self.calls = {"keyframes": 0, "propagation": 0}

    def begin_step(self, inject_residual: bool, inject_qk: bool):
        self._kf_keys.clear()
        self._kf_out.clear()
        self._plan = None
        self.inject_residual = bool(inject_residual)
        self.inject_qk = bool(inject_qk)

    def begin_keyframes(self):
        self.phase = "keyframes"
        self.calls["keyframes"] += 1

    def begin_propagation(self, first, second, weight):
        """first, second: keyframe slots [n]; weight [n] for the frames of the next UNet call."""
        if not self._kf_out:
            raise STEMError("propagation needs a keyframe pass first")
        self.phase = "propagation"
        self._plan = (torch.as_tensor(first, dtype=torch.long), torch.as_tensor(second, dtype=torch.long),
                      torch.as_tensor(weight, dtype=torch.float64))
        self.calls["propagation"] += 1

    def finish(self):
        self.active = False
        self.phase = None
        self._plan = None
        self._captured = None
        self._kf_keys.clear()
        self._kf_out.clear()

    def store_bytes(self) -> int:
        tensors = list(self._kf_keys.values()) + list(self._kf_out.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- hooks ---------------------------------------------------------------------------------------
    def __call__(self, n, context, value, extra_options):
        """attn1 pre-projection patch: remember this layer's input features."""
        if self.active:
            self._captured = (site_of(extra_options), extra_options.get("block_index", 0), n)
        return n, context, value

    def replace(self, site) -> "_SiteReplace":
        return _SiteReplace(self, tuple(site))

    def residual_layers(self, out_layers: nn.Sequential) -> "ResidualInjection":
        return ResidualInjection(*list(out_layers.children()), hooks=self)

    def _frames(self, batch: int) -> int:
        if batch % self.groups:
            raise STEMError(f"batch {batch} is not {self.groups} groups of frames; TokenFlow hooks must see "
                                 f"[source | uncond | cond] in one call")
        return batch // self.groups

    def _source_features(self, site, n_frames):
        cap = self._captured
        if cap is None or cap[0] != site:
            raise STEMError(f"no attention input recorded for layer {site}; the TokenFlow attn1 patch must "
                                 f"run before the attention replacement of the same layer")
        self._captured = None
        return cap[2][:n_frames]

    def attend(self, site, q, k, v, extra_options):
        heads = int(extra_options["n_heads"])
        if not self.active or site not in self.sites or self.phase is None:
            return attention(q, k, v, heads)
        n = self._frames(q.shape[0])
        if self.phase == "keyframes":
            return self._keyframes(site, q, k, v, heads, n)
        return self._propagate(site, q, n, v.shape[-1])

    def _keyframes(self, site, q, k, v, heads, n):
        g = self.groups
        if self.inject_qk and site in self.qk_sites:
            q = q.clone()
            k = k.clone()
            for grp in range(1, g):
                q[grp * n:(grp + 1) * n] = q[:n]
                k[grp * n:(grp + 1) * n] = k[:n]
        out_source = attention(q[:n], k[:n], v[:n], heads)
        out_edit = all_frame_attention(q[n:], k[n:], v[n:], n, heads, frame_chunk=self.query_frame_chunk)
        out = torch.cat((out_source, out_edit), dim=0)
        feats = self._source_features(site, n)
        self._kf_keys[site] = normalize_keys(feats).to(feats.dtype if feats.is_floating_point() else torch.float32)
        self._kf_out[site] = out.reshape(g, n, out.shape[1], out.shape[2])
        self.peak_store_bytes = max(self.peak_store_bytes, self.store_bytes())
        return out

    def _propagate(self, site, q, n, dv):
        if site not in self._kf_out:
            raise STEMError(f"layer {site} has no keyframe output in this step")
        first, second, weight = self._plan
        if first.numel() != n:
            raise STEMError(f"propagation plan covers {first.numel()} frames but the UNet call has {n}")
        feats = self._source_features(site, n)
        keys = self._kf_keys[site]
        idx_first = nearest_neighbors(feats, keys, first, self.nn_block, keys_normalized=True)
        if torch.equal(first, second):
            idx_second = idx_first
        else:
            idx_second = nearest_neighbors(feats, keys, second, self.nn_block, keys_normalized=True)
        out = propagate(self._kf_out[site], first, second, weight, idx_first, idx_second)
        return out.reshape(self.groups * n, out.shape[2], dv).to(q.dtype)


class _SiteReplace:
    """attn1 replacement of one layer: (q, k, v, extra_options) -> attention output [B, L, heads*d]."""

    def __init__(self, hooks: TokenFlowHooks, site):
        self.hooks = hooks
        self.site = site

    def __deepcopy__(self, memo):
        return self

    def to(self, *args, **kwargs):
        return self

    def __call__(self, q, k, v, extra_options):
        return self.hooks.attend(self.site, q, k, v, extra_options)


class ResidualInjection(nn.Sequential):
    """Drop-in for a ResBlock's ``out_layers`` (norm, SiLU, dropout, conv2: the residual branch).

    Shares the original layers (same parameter objects and state-dict keys, so weight patches such as
    LoRA still apply); while its hooks inject, the edit groups' residual features are replaced by the
    source group's: ``h[grp] = h[source]`` for every edit group. Otherwise a plain Sequential.
    """

    def __init__(self, *layers, hooks: Optional[TokenFlowHooks] = None):
        super().__init__(*layers)
        object.__setattr__(self, "hooks", hooks)

    def __deepcopy__(self, memo):
        return self

    def forward(self, x):
        h = super().forward(x)
        hooks = self.hooks
        if hooks is None or not (hooks.active and hooks.inject_residual and hooks.phase is not None):
            return h
        g = hooks.groups
        if h.shape[0] % g:
            raise STEMError(f"residual injection: batch {h.shape[0]} is not {g} groups of frames")
        n = h.shape[0] // g
        h = h.clone()
        for grp in range(1, g):
            h[grp * n:(grp + 1) * n] = h[:n]
        return h


# ----------------------------------------------------------------------------------------------------
# the editing loop


@dataclass(frozen=True)
class TokenFlowSettings:
    """cfg 7.5, pnp_f_t 0.8, pnp_attn_t 0.5, chunk_size 8: TokenFlow's defaults; seed draws the keyframes."""
    cfg: float = 7.5
    pnp_f_t: float = 0.8
    pnp_attn_t: float = 0.5
    chunk_size: int = 8
    seed: int = 0
    blend: str = "paper"

    def validated(self) -> "TokenFlowSettings":
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise STEMError(f"must be an integer >= 1 (one keyframe per chunk), got {self.chunk_size!r}",
                            input_name="chunk_size", fix="TokenFlow uses 8")
        if self.blend not in BLEND_MODES:
            raise STEMError(f"must be one of {BLEND_MODES}, got {self.blend!r}", input_name="blend")
        for name in ("pnp_f_t", "pnp_attn_t"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise STEMError(f"is a fraction of the steps and must lie in [0, 1], got {value}", input_name=name)
        if not (math.isfinite(float(self.cfg)) and self.cfg >= 0):
            raise STEMError(f"must be a finite number >= 0, got {self.cfg}", input_name="cfg")
        return self

    @property
    def groups(self) -> int:
        """Batch groups of every UNet call: [source | cond] at cfg 1, else [source | uncond | cond]."""
        return 2 if self.cfg == 1.0 else 3


def edit_video(apply, trajectory: InversionTrajectory, settings: TokenFlowSettings, embeddings, hooks: TokenFlowHooks,
               device, on_step=None, check_interrupt=None, stats: Optional[dict] = None) -> torch.Tensor:
    """TokenFlow editing from an inversion trajectory -> the edited latent in sampler space [frames, 4, h, w].

    apply(batch [B, 4, h, w], sigma, text [B, tokens, C], cond_or_uncond) -> denoised: the UNet with
    ``hooks`` installed (the glue provides it); embeddings: the text embeddings [1, tokens, C] of
    [source, negative, positive] (negative left out at cfg 1), already of one length and on ``device``.
    Every step: the keyframes through the UNet together, then the other frames in passes of chunk_size
    (propagated from the keyframes), then one DDIM step of the whole video.
    """
    frames, steps, groups = trajectory.frames, trajectory.steps, settings.groups
    schedule = InjectionSchedule(steps, settings.pnp_f_t, settings.pnp_attn_t)
    keyframes = keyframe_schedule(frames, settings.chunk_size, steps, settings.seed)
    cond_or_uncond = [0, 1, 0] if groups == 3 else [0, 0]
    sigmas = trajectory.sampling_sigmas.to(torch.float32)

    def denoise(frame_idx, x, source, sigma):
        n = len(frame_idx)
        idx = torch.as_tensor(frame_idx, dtype=torch.long, device=device)
        xs = x.index_select(0, idx)
        batch = torch.cat([source.index_select(0, idx)] + [xs] * (groups - 1), dim=0)
        text = torch.cat([e.expand(n, -1, -1) for e in embeddings], dim=0)
        d = apply(batch, sigma, text, cond_or_uncond)
        if groups == 2:
            return d[n:]
        d_uncond, d_cond = d[n:2 * n], d[2 * n:]
        return d_uncond + settings.cfg * (d_cond - d_uncond)

    x = trajectory.latents[-1].to(device, torch.float32)
    hooks.start(groups)
    try:
        for i in range(steps):
            if check_interrupt is not None:
                check_interrupt()
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            source = trajectory.latent_at_sampling_step(i).to(device, torch.float32)
            kf = keyframes[i].tolist()
            plan = blend_plan(frames, kf, settings.chunk_size, settings.blend)
            hooks.begin_step(schedule.residual(i), schedule.qk(i))
            denoised = torch.empty_like(x)
            hooks.begin_keyframes()
            d_kf = denoise(kf, x, source, sigma)
            copied = [f for f in range(frames) if plan.is_copy_of_keyframe(f)]
            for f in copied:
                denoised[f] = d_kf[kf.index(f)]
            rest = [f for f in range(frames) if f not in set(copied)]
            for s in range(0, len(rest), settings.chunk_size):
                if check_interrupt is not None:
                    check_interrupt()
                part = rest[s:s + settings.chunk_size]
                sel = torch.as_tensor(part, dtype=torch.long)
                hooks.begin_propagation(plan.first[sel], plan.second[sel], plan.weight[sel])
                denoised[torch.as_tensor(part, device=device)] = denoise(part, x, source, sigma)
            x = ddim_step(x, denoised, sigma, sigma_next)
            if stats is not None:
                stats["peak_store_bytes"] = max(stats.get("peak_store_bytes", 0), hooks.peak_store_bytes)
            if on_step is not None:
                on_step(i, steps)
    finally:
        if stats is not None:
            stats.update(calls=dict(hooks.calls), keyframes=keyframes.tolist())
        hooks.finish()
    return x
