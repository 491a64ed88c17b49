"""FateZero attention fusion (Qi et al., ICCV 2023) on top of STEM inversion: pure PyTorch.

What lives here (no ComfyUI import; the callables only read plain ``extra_options`` dict entries):
- :class:`AttentionStore`: the source's attention probabilities of every inversion step, on the CPU or
  spilled to a folder, with ``nbytes()`` and ``free()``.
- :class:`AttentionStoreWriter`: the patches that fill a store while STEMInvert runs (attn1_patch +
  attn1_replace + attn2_replace), driven by the ``begin_inversion`` / ``finish_inversion`` seam.
- Word alignment of source and target token ids (:func:`align_prompts`), cross-attention replace /
  refine and per-word reweighting (:func:`fuse_cross`), self-attention replacement (:func:`blend_outputs`),
  the blend mask (:func:`blend_mask`) and the step windows.
- :class:`FusionPatches`: the patches of the editing branch that read the store, and
  :func:`edit_loop`, the DDIM sampling loop of the edit with FateZero's optional latent blend.

Step convention (all fractions count DENOISING steps from the noisiest one):
- Editing step ``j`` (0 = the first, noisiest step at sigma_max; ``steps - 1`` the last) runs from
  ``sampling_sigmas[j]`` to ``sampling_sigmas[j + 1]``. It reads the store of inversion step
  ``steps - 1 - j``, the inversion step that crossed the same sigma interval in the other direction
  (FateZero reads its store in the same reverse order).
- A fraction ``f`` fuses the steps ``j < floor(f * steps)``, i.e. DDIM timesteps t in [(1 - f) T, T].
  The STEM paper (supplement D) fuses cross-attention over t in [0.2T, T] and self-attention over
  [0.5T, T]: ``cross_replace_steps = 0.8`` and ``self_replace_steps = 0.5`` (FateZero's own configs use
  0.5-0.8 and 0.6-0.9). 0 disables a fusion, 1 fuses every step.
- Optional latent blending (FateZero's LocalBlend) runs after step j when
  ``floor(0.2 * steps) < j + 1 < floor(0.8 * steps)``.

Self-attention correspondence under STEM-SA (the stored maps are [HW, K], not [HW, HW]):
a stored map ``P_src[n, h, i, k]`` says how much query token i of frame n attended to source basis k.
Basis k is the set of video tokens that the source's EM assigned to it (responsibilities ``Z_src``,
recorded with the map). In the editing branch the bases are rebuilt from the TARGET features with
those SOURCE responsibilities, ``mu_tgt[k] = sum_m Z_src[m, k] x_tgt[m] / sum_m Z_src[m, k]`` (the M-step
with the source's E-step), so basis k covers the same region in both branches and ``P_src`` applied
to ``mu_tgt W_V`` mixes the target's appearance with the source's layout -- exactly what FateZero's
``P_src V_tgt`` does per token. With K = all tokens and tau -> 0 (Z = identity) it IS FateZero's
all-frame self-attention replacement. Reusing the stored source bases instead would make
``P_src mu_src W_V`` the source's own output and copy the source's appearance into the edit.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import attention as attn
from .attention import group_rows, sigma_of, video_batch
from .em import m_step
from .errors import STEMError
from .inversion import InversionTrajectory, ddim_step
from .memory import (available_disk_bytes, available_ram_bytes, check_fits, fatezero_store_bytes, fused_steps,
                     largest_fitting, latent_blend_steps, recorded_store_steps)
from .sites import BLEND_MASK_SITES, SD15_KEYS, site_name, site_of

MAX_TOKENS = 77
STORE_DTYPE = torch.float16
# extra_options key: the fusion's attn1_patch tells its attn1_replace where the [rebuilt | own] keys split
SPLIT_KEYS = "stem_fusion_split"
KINDS = ("cross", "self", "resp")


# ------------------------------------------------------------------------------------------------
# step windows


def store_step(edit_step: int, steps: int) -> int:
    """The inversion step whose maps editing step ``edit_step`` reads (reverse order)."""
    return int(steps) - 1 - int(edit_step)


def latent_blend_active(edit_step: int, steps: int) -> bool:
    return edit_step in latent_blend_steps(steps)


# ------------------------------------------------------------------------------------------------
# the store


class AttentionStore:
    """Attention probabilities of one inversion, keyed by (step, kind, site).

    kinds: "cross" [frames, heads, HW, 77]; "self" [frames, heads, HW, Lk] (Lk = K under STEM-SA,
    HW per frame and two-frame, frames*HW all-frame); "resp" [frames*HW, K] (the source's EM
    responsibilities under STEM-SA: those of the last E-step, in float32). Maps are kept as float16 on the CPU,
    or saved one file per entry in
    ``folder`` (deleted by :meth:`free` or when the store is garbage-collected).
    """

    def __init__(self, steps: int, frames: int, folder: str | None = None, info: dict | None = None):
        self.steps = int(steps)
        self.frames = int(frames)
        self.info = dict(info or {})
        self._mem = {}
        self._files = {}
        self._bytes = {}
        self._shapes = {}
        self.freed = False
        self.folder = None
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix="stem_attention_", dir=folder)
            self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def put(self, step: int, kind: str, site, tensor: torch.Tensor, dtype: torch.dtype = STORE_DTYPE):
        if self.freed:
            raise STEMError("the attention store was already freed")
        key = (int(step), kind, tuple(site))
        t = tensor.detach().to("cpu", dtype).contiguous()
        self._bytes[key] = t.numel() * t.element_size()
        self._shapes[key] = tuple(t.shape)
        if self.folder is not None:
            os.makedirs(self.folder, exist_ok=True)  # someone may have emptied the temp folder
            path = os.path.join(self.folder, f"{key[0]:04d}_{kind}_{site_name(site)}.pt")
            torch.save(t, path)
            self._files[key] = path
        else:
            self._mem[key] = t

    def has(self, step, kind, site) -> bool:
        return (int(step), kind, tuple(site)) in self._bytes

    def get(self, step, kind, site, device=None, dtype=torch.float32) -> torch.Tensor:
        if self.freed:
            raise STEMError("the attention store of this trajectory was freed (release_store on a previous "
                                "edit). Re-run STEM Invert (change one of its inputs) or turn release_store off")
        key = (int(step), kind, tuple(site))
        if key in self._mem:
            t = self._mem[key]
        elif key in self._files:
            try:
                t = torch.load(self._files[key], map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise STEMError(f"the stored attention file {self._files[key]} was deleted (ComfyUI empties its "
                                    f"temp folder when it starts); run STEM Invert again") from None
        else:
            raise STEMError(f"the attention store has no {kind} map of {site_name(site)} at inversion step {step}")
        return t.to(device=device, dtype=dtype)

    def shape(self, step, kind, site):
        return self._shapes.get((int(step), kind, tuple(site)))

    def sites(self, kind: str) -> tuple:
        found = {k[2] for k in self._bytes if k[1] == kind}
        return tuple(s for s in SD15_KEYS if s in found)

    def nbytes(self, kind: str | None = None) -> int:
        """Bytes of the stored maps (payload, whether in RAM or in the folder)."""
        return sum(b for k, b in self._bytes.items() if kind is None or k[1] == kind)

    def expected_steps(self, kind: str, site) -> list:
        """The inversion steps the store should hold for a kind at a site (info["recorded"], else every step)."""
        rec = self.info.get("recorded")
        if rec is None:
            return list(range(self.steps))
        if kind == "cross" and tuple(site) in self.info.get("blend_sites", ()):
            return sorted(set(rec["cross"]) | set(rec["blend"]))
        return rec["self"] if kind in ("self", "resp") else rec["cross"]

    def missing_entries(self) -> list:
        """Names of (kind, site) pairs that miss a step they should hold (empty when complete)."""
        missing = []
        for kind in KINDS:
            for site in self.sites(kind):
                if any(not self.has(s, kind, site) for s in self.expected_steps(kind, site)):
                    missing.append(f"{kind}:{site_name(site)}")
        return missing

    def free(self):
        self._mem.clear()
        self._files.clear()
        self.freed = True
        if self.folder is not None:
            self._finalizer()

    def describe(self) -> str:
        where = f"folder {self.folder}" if self.folder else "CPU RAM"
        return (f"attention store: {self.nbytes()} bytes ({self.nbytes() / 2**20:.1f} MiB; self "
                f"{self.nbytes('self')}, cross {self.nbytes('cross')}, resp {self.nbytes('resp')}) in {where}, "
                f"{self.steps} steps, {len(self.sites('cross'))} cross / {len(self.sites('self'))} self layers")


# ------------------------------------------------------------------------------------------------
# word alignment (token id lists without start/end tokens; positions are in the 77-token sequence,
# where position 0 is the start token)


def find_word(prompt_ids, word_ids) -> list:
    """Positions (1-based, after the start token) of every occurrence of word_ids in prompt_ids."""
    prompt_ids, word_ids = list(prompt_ids), list(word_ids)
    n = len(word_ids)
    if n == 0:
        return []
    out = []
    for i in range(len(prompt_ids) - n + 1):
        if prompt_ids[i:i + n] == word_ids:
            out.extend(range(1 + i, 1 + i + n))
    return out


@dataclass
class Alignment:
    """How the target's cross-attention columns read the source's maps (prompt-to-prompt / FateZero).

    matrix[s, t]: weight of source position s in target position t's fused map; alphas[t] 1 where the target
    column takes the source's (mapped) map, 0 where it keeps its own. Positions are in the 77-token sequence.
    """
    mode: str               # "replace" (same number of words) or "refine"
    matrix: torch.Tensor    # float [length, length]
    alphas: torch.Tensor    # float [length]


def _flatten(words):
    return [t for w in words for t in w]


def _tail(matrix, alphas, src_len, tgt_len, length):
    """End token and padding: target position t maps to the source's position at the same distance from the
    end of the prompt (end token onto end token), clipped to the sequence."""
    for t in range(1 + tgt_len, length):
        matrix[min(length - 1, t + src_len - tgt_len), t] = 1.0
        alphas[t] = 1.0


def replacement_matrix(source_words, target_words, length: int = MAX_TOKENS) -> torch.Tensor:
    """prompt-to-prompt's replacement mapper (seq_aligner.get_replacement_mapper_) for prompts of the same number
    of words: equal words map token to token; a replaced word maps token to token when both have the same token
    count, else every source token of the word gives 1/T of its map to each of the T target tokens. The start
    token maps to itself; end and padding as :func:`_tail`. Unlike the reference, tokens after the last replaced
    word keep pairing with their own word's tokens (the reference pairs them by absolute index, which shifts them
    by the length difference)."""
    m = torch.zeros(length, length)
    m[0, 0] = 1.0
    i = j = 1
    for src, tgt in zip(source_words, target_words):
        if len(src) == len(tgt):
            for a in range(len(src)):
                m[i + a, j + a] = 1.0
        else:
            m[i:i + len(src), j:j + len(tgt)] = 1.0 / len(tgt)
        i, j = i + len(src), j + len(tgt)
    alphas = torch.zeros(length)
    alphas[:j] = 1.0
    _tail(m, alphas, i - 1, j - 1, length)
    return m, alphas


def global_alignment(x, y, gap: int = 0, match: int = 1, mismatch: int = -1) -> list:
    """Needleman-Wunsch alignment of token sequences with prompt-to-prompt's scores and tie-break order
    (seq_aligner.global_align / get_aligned_sequences: a target insertion before a source deletion before the
    diagonal) -> for every position of y, the aligned position of x or -1."""
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    trace = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        score[i][0], trace[i][0] = i * gap, 2
    for j in range(1, m + 1):
        score[0][j], trace[0][j] = j * gap, 1
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left, up = score[i][j - 1] + gap, score[i - 1][j] + gap
            diag = score[i - 1][j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else (2 if best == up else 3)
    out = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        if trace[i][j] == 3:
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif trace[i][j] == 1:
            j -= 1
        else:
            i -= 1
    return out


def refinement_matrix(source_ids, target_ids, length: int = MAX_TOKENS):
    """prompt-to-prompt's refinement mapper (seq_aligner.get_refinement_mapper): tokens aligned by
    :func:`global_alignment` over the whole sequences (start and end tokens included) take the source's map,
    inserted target tokens keep their own (alpha 0); padding maps to itself."""
    x, y = [-2] + list(source_ids) + [-3], [-2] + list(target_ids) + [-3]  # start / end markers
    aligned = global_alignment(x, y)
    m, alphas = torch.zeros(length, length), torch.zeros(length)
    for t, s in enumerate(aligned):
        if s >= 0:
            m[s, t], alphas[t] = 1.0, 1.0
    for t in range(len(y), length):
        m[t, t], alphas[t] = 1.0, 1.0
    return m, alphas


def align_prompts(source_words, target_words, length: int = MAX_TOKENS) -> Alignment:
    """FateZero's choice (p2p_ddim_spatial_temporal.py, p2preplace_edit): the same number of words (the prompt
    split on spaces) is "replace" (:func:`replacement_matrix`), a different number "refine"
    (:func:`refinement_matrix`). source_words / target_words: the token ids of each word, without start/end."""
    src, tgt = _flatten(source_words), _flatten(target_words)
    if len(src) + 2 > length or len(tgt) + 2 > length:
        raise STEMError(f"prompts must fit in {length - 2} tokens (source {len(src)}, target {len(tgt)})")
    if len(source_words) == len(target_words):
        return Alignment("replace", *replacement_matrix(source_words, target_words, length))
    return Alignment("refine", *refinement_matrix(src, tgt, length))


def parse_reweight(text: str) -> list:
    """'word:2.0, other words:0.5' -> [('word', 2.0), ('other words', 0.5)]."""
    out = []
    for part in str(text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise STEMError(f"reweight: '{part}' needs the form word:weight, e.g. 'red:2.0'")
        word, _, value = part.rpartition(":")
        try:
            weight = float(value)
        except ValueError:
            raise STEMError(f"reweight: '{value}' in '{part}' is not a number") from None
        if not word.strip() or not math.isfinite(weight) or weight < 0:
            raise STEMError(f"reweight: '{part}' needs a word and a finite weight >= 0")
        out.append((word.strip(), weight))
    return out


def differing_words(source_prompt: str, target_prompt: str) -> list:
    """The target prompt's words (split on spaces) that the source prompt does not have: the default target blend
    words (the edited words)."""
    source = set(str(source_prompt).split())
    return [w for w in dict.fromkeys(str(target_prompt).split()) if w not in source]


def parse_words(text: str) -> list:
    """'red car, hat' -> ['red car', 'hat'] (comma separated; a phrase is located as a whole)."""
    return [w.strip() for w in str(text or "").replace(";", ",").split(",") if w.strip()]


def equalizer(position_weights, length: int = MAX_TOKENS) -> torch.Tensor | None:
    """{position: weight} -> [length] multiplier of the target's cross-attention maps (None if empty)."""
    if not position_weights:
        return None
    eq = torch.ones(length)
    for pos, w in position_weights.items():
        eq[pos] = w
    return eq


# ------------------------------------------------------------------------------------------------
# fusion maths


def fuse_cross(p_src: torch.Tensor, p_tgt: torch.Tensor, alignment: Alignment, alpha: float,
               eq: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-attention fusion of one step. p_src, p_tgt [..., 77] -> [..., 77].

    alpha 1 (inside the cross window): target position j reads the source's map at mapper[j] where
    alphas[j] = 1, its own map elsewhere; alpha 0: the target's own maps. eq multiplies the fused map afterwards
    (reweighting, p2p's equalizer); the editing patches call this only inside the cross window, as FateZero's
    AttentionReweight is reached only there (attention_util.py, AttentionControlEdit.forward).
    """
    out = p_tgt
    if alpha > 0:
        mapped = torch.matmul(p_src, alignment.matrix.to(p_src.device, p_src.dtype))
        a = alignment.alphas.to(p_tgt.device, p_tgt.dtype)
        replaced = mapped * a + p_tgt * (1 - a)
        out = replaced * alpha + p_tgt * (1 - alpha)
    if eq is not None:
        out = out * eq.to(out.device, out.dtype)
    return out


def blend_outputs(own: torch.Tensor, from_source: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """FateZero's masked self-attention replacement on outputs: own, from_source [frames, HW, D]; mask [frames, HW]
    (1 = edited region keeps the target's own output) or None (the source's maps everywhere). FateZero mixes the
    probabilities and applies the edit's values (attention_util.py, AttentionControlEdit.replace_self_attention),
    which is the same mix of outputs whenever own and source maps read the same values; under STEM they do not
    (the source's maps read bases rebuilt from its responsibilities, the target's own attention its own bases),
    so the outputs are blended."""
    if mask is None:
        return from_source
    m = mask.to(own.device, own.dtype)[:, :, None]
    return m * own + (1 - m) * from_source.to(own.dtype)


def bases_from_responsibilities(x: torch.Tensor, z: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """mu_tgt = M-step of the target tokens x [G, M, C] with the source's responsibilities z [G, M, K];
    a basis that owns no token keeps ``fallback`` [G, K, C] (the target's own EM basis)."""
    return m_step(x, z.to(x.dtype if x.dtype == torch.float64 else torch.float32), fallback)


def layer_hw(tokens: int, latent_hw) -> tuple:
    """Token grid (h, w) of a layer with ``tokens`` tokens for a latent of size latent_hw."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    f = 1
    while f <= max(h, w):
        lh, lw = -(-h // f), -(-w // f)
        if lh * lw == tokens:
            return lh, lw
        f *= 2
    side = int(round(math.sqrt(tokens)))
    if side * side == tokens:
        return side, side
    raise STEMError(f"cannot place {tokens} tokens on the grid of a {h}x{w} latent")


def word_attention(maps, positions, latent_hw) -> torch.Tensor:
    """Mean over heads and layers of the summed cross-attention of ``positions``.

    maps: list of [frames, heads, HW_l, 77] (one per layer, resolutions may differ) -> [frames, h, w] at
    the finest layer's grid (coarser layers are resized bilinearly)."""
    if not maps:
        raise STEMError("no cross-attention maps to build the blend mask from")
    idx = torch.as_tensor(list(positions), dtype=torch.long)
    grids = []
    for p in maps:
        hw = layer_hw(p.shape[2], latent_hw)
        g = p.float().index_select(-1, idx.to(p.device)).sum(-1).mean(1)  # [frames, HW]
        grids.append(g.reshape(p.shape[0], 1, *hw))
    size = max((g.shape[-2:] for g in grids), key=lambda s: s[0] * s[1])
    grids = [g if tuple(g.shape[-2:]) == tuple(size) else F.interpolate(g, size=tuple(size), mode="bilinear",
                                                                        align_corners=False) for g in grids]
    return torch.stack(grids).mean(0)[:, 0]


def normalised_blend_map(word_maps: torch.Tensor, size) -> torch.Tensor:
    """[frames, h, w] -> [frames, H, W] in [0, 1]: 3x3 max-pool, nearest resize, divide by each frame's max."""
    m = F.max_pool2d(word_maps[:, None].float(), kernel_size=3, stride=1, padding=1)
    m = F.interpolate(m, size=tuple(int(s) for s in size), mode="nearest")[:, 0]
    peak = m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return m / peak


def blend_mask(word_maps: torch.Tensor, size, threshold: float) -> torch.Tensor:
    """FateZero's blend mask [frames, H, W] (1 = edited region): normalised map > threshold."""
    return (normalised_blend_map(word_maps, size) > float(threshold)).float()


# ------------------------------------------------------------------------------------------------
# helpers shared by writer and fusion


def _nearest_step(sigma, sigmas) -> int | None:
    if sigma is None or sigmas is None or len(sigmas) == 0:
        return None
    d = (sigmas.double() - sigma).abs()
    i = int(torch.argmin(d))
    return i if float(d[i]) <= 1e-3 * max(1.0, abs(sigma)) else None


# ------------------------------------------------------------------------------------------------
# recording during inversion


class AttentionStoreWriter:
    """attn1_patch of a model clone that writes an :class:`AttentionStore` while STEMInvert runs.

    Inert (plain pass-through attention) outside ``begin_inversion`` .. ``finish_inversion``. Its
    ``self_replace``/``cross_replace`` objects are the attn1/attn2 replaces of the recorded sites.
    ``contexts`` maps a site to the self-attention mode the model uses there ("stem" = paper STEM-SA,
    "per_frame", "two_frame", "all_frame"; missing sites are "per_frame"); ``folder`` a folder to spill the maps
    into (None: CPU RAM). Only what the edit will read is recorded (memory.recorded_store_steps): self maps and
    STEM responsibilities inside ``self_fraction`` of the editing steps, cross maps inside ``cross_fraction``,
    and the blend sites' cross maps wherever blend masks are needed (``blend_masks``). ``begin_inversion``
    computes the store's size from the shapes first and refuses one that does not fit in free RAM (or, with a
    folder, free disk); ``available(folder)`` overrides how much is free (tests).
    """

    def __init__(self, sites, contexts=None, tau: float = 0.05, folder: str | None = None, num_bases: int = 256,
                 self_fraction: float = 0.5, cross_fraction: float = 0.8, blend_masks: bool = True, available=None):
        self.sites = tuple(tuple(s) for s in sites)
        self.contexts = dict(contexts or {})
        self.tau = float(tau)
        self.folder = folder
        self.num_bases = int(num_bases)
        self.self_fraction, self.cross_fraction = float(self_fraction), float(cross_fraction)
        self.blend_masks = bool(blend_masks)
        self.available = available
        chosen = [s for s in BLEND_MASK_SITES if s in self.sites]
        self.blend_sites = tuple(chosen) if chosen else self.sites
        self.store = None
        self.sigmas = None
        self.recorded = None

    def __deepcopy__(self, memo):  # clones get their own empty writer (no tensors copied)
        return AttentionStoreWriter(self.sites, self.contexts, self.tau, self.folder, self.num_bases,
                                    self.self_fraction, self.cross_fraction, self.blend_masks, self.available)

    def context_at(self, site) -> str:
        return self.contexts.get(tuple(site), "per_frame")

    def to(self, device_or_dtype):
        return self

    def store_bytes(self, frames: int, latent_hw, steps: int) -> int:
        return fatezero_store_bytes(frames, latent_hw, self.sites, self.contexts, steps, self.num_bases,
                                    self.self_fraction, self.cross_fraction, self.blend_masks, self.blend_sites)

    def _preflight(self, frames: int, latent_hw, steps: int):
        needed = self.store_bytes(frames, latent_hw, steps)
        where = "free disk in ComfyUI's temp folder" if self.folder else "free RAM"
        if self.available is not None:
            available = self.available(self.folder)
        else:
            available = available_disk_bytes(self.folder) if self.folder else available_ram_bytes()
        limit = int(available * 0.8)
        if needed <= limit:
            return
        fits = largest_fitting(frames, lambda n: self.store_bytes(n, latent_hw, steps), limit)
        h, w = (int(v) * 8 for v in latent_hw)
        check_fits(needed, available, f"the FateZero attention store of {frames} frames of {w}x{h} px over {steps} "
                                      f"steps at {len(self.sites)} layers ({where})",
                   f"use at most {fits} frames (frame_load_cap), fewer layers (layers 'fatezero' stores 11 of 16), "
                   f"shorter replace windows on STEM Attention Store (self {self.self_fraction}, cross "
                   f"{self.cross_fraction}), fewer steps, or keep = temp_folder (disk instead of RAM)")

    # -- the inversion seam --------------------------------------------------------------------
    def begin_inversion(self, frames, sigmas, latent_hw=None):
        self.abort_inversion()
        sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
        steps = len(sig) - 1
        if latent_hw is not None:
            self._preflight(int(frames), latent_hw, steps)  # before anything is allocated
        self.recorded = recorded_store_steps(steps, self.self_fraction, self.cross_fraction, self.blend_masks)
        self.sigmas = sig[1:]  # inversion step i evaluates the model at its destination sigma sig[i + 1]
        self.store = AttentionStore(steps, frames, self.folder,
                                    info={"contexts": {site_name(s): self.context_at(s) for s in self.sites},
                                          "tau": self.tau, "sites": [site_name(s) for s in self.sites],
                                          "recorded": self.recorded, "blend_sites": self.blend_sites,
                                          "self_fraction": self.self_fraction,
                                          "cross_fraction": self.cross_fraction, "blend_masks": self.blend_masks})

    def records(self, step, kind, site) -> bool:
        """Whether inversion step ``step`` keeps ``kind`` maps at ``site`` (only what the edit will read)."""
        if kind in ("self", "resp"):
            return step in self.recorded["self"]
        return step in self.recorded["cross"] or (site in self.blend_sites and step in self.recorded["blend"])

    def finish_inversion(self, trajectory):
        store, self.store, self.sigmas = self.store, None, None
        if store is None:
            return
        missing = store.missing_entries()
        if not store.sites("cross") or not store.sites("self") or missing:
            store.free()
            raise STEMError(
                "STEM Attention Store recorded no or incomplete maps" + (f" ({', '.join(missing[:4])})" if missing
                                                                         else "") +
                ". Put STEM Attention Store AFTER STEM Video Attention (directly before STEM Invert), and do not "
                "patch attention between them")
        trajectory.extras["attention_store"] = store
        logging.info("[STEM] %s", store.describe())

    def abort_inversion(self):
        if self.store is not None:
            self.store.free()
        self.store, self.sigmas = None, None

    @property
    def active(self) -> bool:
        return self.store is not None

    def _step(self, extra_options):
        return _nearest_step(sigma_of(extra_options), self.sigmas)

    # -- attn1_patch: the source's EM responsibilities (paper STEM-SA only) ----------------------
    def __call__(self, n, context, value, extra_options):
        site = site_of(extra_options)
        if not self.active or site not in self.sites or context is None or context is n:
            return n, context, value
        step = self._step(extra_options)
        cond_or_uncond, frames = video_batch(n.shape[0], extra_options)
        if step is None or 0 not in cond_or_uncond or not self.records(step, "resp", site):
            return n, context, value
        z = extra_options.get(attn.RESPONSIBILITIES)
        if z is None:
            raise STEMError(f"{site_name(site)}: no STEM responsibilities reached the attention store",
                            input_name="model", fix="connect STEM Attention Store AFTER STEM Video Attention, "
                                                    "directly before STEM Invert")
        # the last E-step's responsibilities of the cond group [frames * HW, K], kept in float32: the edit rebuilds
        # the source's bases from them exactly
        self.store.put(step, "resp", site, z[cond_or_uncond.index(0)], dtype=torch.float32)
        return n, context, value

    def self_replace(self, site, wrapped=None):
        return _RecordAttention(self, site, "self", wrapped)

    def cross_replace(self, site, wrapped=None):
        return _RecordAttention(self, site, "cross", wrapped)


class _RecordAttention:
    """attn1/attn2 replace that records the conditional branch's probability maps at each inversion step
    (kind "self": keys/values in the inversion's attention context; kind "cross": the prompt tokens)."""

    def __init__(self, recorder, site, kind, wrapped=None):
        self.recorder, self.site, self.kind, self.wrapped = recorder, tuple(site), kind, wrapped

    def to(self, device_or_dtype):
        return self

    def __call__(self, q, k, v, extra_options):
        rec = self.recorder
        heads = int(extra_options["n_heads"])
        step = rec._step(extra_options) if rec.active else None
        cond_or_uncond, frames = video_batch(q.shape[0], extra_options)
        if step is None or 0 not in cond_or_uncond or not rec.records(step, self.kind, self.site):
            if self.wrapped is not None:
                return self.wrapped(q, k, v, extra_options)
            return attn.attention(q, k, v, heads)
        if self.kind == "self":
            ctx = rec.context_at(self.site)
            k, v = attn.context_for_mode(k, frames, ctx, self.site), attn.context_for_mode(v, frames, ctx, self.site)
        out, probs = attn.attention_with_probs(q, k, v, heads)
        rec.store.put(step, self.kind, self.site, probs[group_rows(cond_or_uncond.index(0), frames)])
        return out


# ------------------------------------------------------------------------------------------------
# fusion during editing


@dataclass
class FusionSettings:
    alignment: Alignment
    cross_steps: int                 # editing steps j < cross_steps fuse cross-attention
    self_steps: int                  # editing steps j < self_steps fuse self-attention
    blend_positions: tuple = ()      # source positions of the blend words (empty: no mask)
    blend_threshold: float = 0.3
    eq: torch.Tensor | None = None   # reweighting of the target's cross-attention
    target_blend_positions: tuple = ()  # target positions of the target blend words (latent blend only)


class FusionPatches:
    """The editing branch's patches: attn1_patch (STEM bases from the source responsibilities),
    attn1_replace (self-attention replacement, blend-masked) and attn2_replace (cross-attention
    replace/refine + reweight) at every stored site. Only the conditional (target) group is fused;
    the unconditional group keeps its own attention, as in FateZero.

    ``sampling_sigmas`` are the editing model-call sigmas [steps]; the step of a call is found from its
    sigma, so the objects also work when ComfyUI copies them.
    """

    def __init__(self, store: AttentionStore, settings: FusionSettings, sampling_sigmas, latent_hw,
                 contexts=None, blend_sites=BLEND_MASK_SITES):
        self.store = store
        self.settings = settings
        self.sigmas = torch.as_tensor(sampling_sigmas, dtype=torch.float64).reshape(-1)
        self.steps = int(store.steps)
        self.latent_hw = tuple(int(s) for s in latent_hw)
        self.contexts = dict(contexts or {})
        recorded = tuple(tuple(s) for s in store.info.get("blend_sites", ()))
        chosen = [s for s in blend_sites if s in store.sites("cross")]
        self.blend_sites = recorded or (tuple(chosen) if chosen else store.sites("cross"))
        self._masks = {}
        self._target_sum = {}  # blend site -> running sum over editing steps of the target words' map [frames, HW]
        self.mask_sum = None
        self.mask_count = 0

    def to(self, device_or_dtype):
        return self

    def release(self):
        """Drop every reference to the store and cached masks (called when the edit finishes)."""
        self.store = None
        self._masks.clear()
        self._target_sum.clear()

    def step_of(self, extra_options):
        return _nearest_step(sigma_of(extra_options), self.sigmas[:self.steps])

    # -- blend mask ----------------------------------------------------------------------------
    def mask(self, edit_step: int, size, device=None) -> torch.Tensor | None:
        """[frames, H, W] blend mask of an editing step at a resolution, or None without blend words."""
        s = self.settings
        if not s.blend_positions:
            return None
        key = (edit_step, tuple(size))
        if key not in self._masks:
            sj = store_step(edit_step, self.steps)
            maps = [self.store.get(sj, "cross", site) for site in self.blend_sites]
            words = word_attention(maps, s.blend_positions, self.latent_hw)
            self._masks[key] = blend_mask(words, size, s.blend_threshold)
        m = self._masks[key]
        return m if device is None else m.to(device)

    def add_target_attention(self, site, p_tgt: torch.Tensor):
        """Accumulate the edit's own (pre-fusion) cross-attention of the target blend words at a blend site:
        p_tgt [frames, heads, HW, 77] of the cond rows. FateZero sums it over the editing steps so far."""
        positions = self.settings.target_blend_positions
        if not positions or site not in self.blend_sites:
            return
        idx = torch.as_tensor(positions, dtype=torch.long, device=p_tgt.device)
        words = p_tgt.float().index_select(-1, idx).sum(-1).mean(1).cpu()  # [frames, HW]
        self._target_sum[site] = words if site not in self._target_sum else self._target_sum[site] + words

    def latent_mask(self, edit_step: int, size, device=None) -> torch.Tensor | None:
        """FateZero's latent-blend mask [frames, H, W]: the source words' mask of this step OR the target words'
        mask from the running sum of the edit's own cross-attention (SpatialBlender, prompt_choose 'both')."""
        source = self.mask(edit_step, size)
        if not self._target_sum:
            return source if source is None or device is None else source.to(device)
        grids = []
        for site, g in self._target_sum.items():
            h, w = layer_hw(g.shape[1], self.latent_hw)
            grids.append(g.reshape(g.shape[0], 1, h, w))
        finest = max((t.shape[-2:] for t in grids), key=lambda t: t[0] * t[1])
        words = torch.stack([t if tuple(t.shape[-2:]) == tuple(finest) else
                             F.interpolate(t, size=tuple(finest), mode="bilinear", align_corners=False)
                             for t in grids]).mean(0)[:, 0]
        target = blend_mask(words, size, self.settings.blend_threshold)
        m = target if source is None else torch.maximum(source, target)
        return m if device is None else m.to(device)

    def record_output_mask(self, edit_step: int, size):
        sj = store_step(edit_step, self.steps)
        if not self.settings.blend_positions or not all(self.store.has(sj, "cross", s) for s in self.blend_sites):
            return
        m = self.mask(edit_step, size)
        if m is None:
            return
        self.mask_sum = m.clone() if self.mask_sum is None else self.mask_sum + m
        self.mask_count += 1

    # -- attn1_patch ---------------------------------------------------------------------------
    def __call__(self, n, context, value, extra_options):
        site = site_of(extra_options)
        if self.store is None or context is None or context is n:
            return n, context, value
        j = self.step_of(extra_options)
        if j is None or j >= self.settings.self_steps:
            return n, context, value
        sj = store_step(j, self.steps)
        if not self.store.has(sj, "resp", site):
            return n, context, value
        cond_or_uncond, frames = video_batch(n.shape[0], extra_options)
        if 0 not in cond_or_uncond:
            return n, context, value
        r = group_rows(cond_or_uncond.index(0), frames)
        z = self.store.get(sj, "resp", site, device=n.device)
        k = context.shape[1]
        if z.shape != (frames * n.shape[1], k):
            raise STEMError(
                f"{site_name(site)}: the stored STEM responsibilities are {tuple(z.shape)} but the edit has "
                f"{frames * n.shape[1]} tokens and {k} bases; use the same STEM Video Attention settings and video "
                f"as the inversion")
        x = n[r].reshape(1, -1, n.shape[-1])
        mu = bases_from_responsibilities(x, z[None], context[r][:1].to(x.dtype))
        # [rebuilt | own] along the tokens: the fusion's attn1_replace applies the stored maps to the first half
        # and computes the target's own STEM-SA output (own bases) from the second; other rows see [own | own]
        # (duplicated keys leave softmax attention unchanged).
        first = context.clone()
        first[r] = mu.to(context.dtype).expand(frames, k, context.shape[-1])
        extra_options[SPLIT_KEYS] = k
        both = torch.cat([first, context], dim=1)
        return n, both, both

    # -- attn1_replace / attn2_replace factories ------------------------------------------------
    def self_replace(self, site, wrapped=None):
        return _FuseSelf(self, site, wrapped)

    def cross_replace(self, site):
        return _FuseCross(self, site)


class _FuseSelf:
    def __init__(self, fusion, site, wrapped=None):
        self.fusion, self.site, self.wrapped = fusion, tuple(site), wrapped

    def to(self, device_or_dtype):
        return self

    def _plain(self, q, k, v, extra_options, heads):
        if self.wrapped is not None:
            return self.wrapped(q, k, v, extra_options)
        return attn.attention(q, k, v, heads)

    def __call__(self, q, k, v, extra_options):
        f = self.fusion
        heads = int(extra_options["n_heads"])
        j = f.step_of(extra_options) if f.store is not None else None
        if j is None or j >= f.settings.self_steps:
            return self._plain(q, k, v, extra_options, heads)
        cond_or_uncond, frames = video_batch(q.shape[0], extra_options)
        if 0 not in cond_or_uncond:
            return self._plain(q, k, v, extra_options, heads)
        sj = store_step(j, f.steps)
        ctx = f.contexts.get(self.site, "per_frame")
        split = extra_options.pop(SPLIT_KEYS, None)  # STEM: [bases rebuilt from the source's Z | own bases]
        if split is not None:
            k_src, k_own, v_src, v_own = k[:, :split], k[:, split:], v[:, :split], v[:, split:]
        else:
            k_src = k_own = attn.context_for_mode(k, frames, ctx, self.site)
            v_src = v_own = attn.context_for_mode(v, frames, ctx, self.site)
        out = attn.attention(q, k_own, v_own, heads)  # every row's own attention (the uncond rows keep it)
        r = group_rows(cond_or_uncond.index(0), frames)
        p_src = f.store.get(sj, "self", self.site, device=q.device)
        expected = (frames, heads, q.shape[1], k_src.shape[1])
        if tuple(p_src.shape) != expected:
            raise STEMError(
                f"{site_name(self.site)}: the stored self-attention maps are {tuple(p_src.shape)} but the edit's "
                f"are {expected}; edit with the same model / STEM Video Attention settings as the inversion")
        from_source = attn.apply_probs(p_src, v_src[r], heads)
        hw = layer_hw(q.shape[1], f.latent_hw)
        mask = f.mask(j, hw, device=q.device)
        out = out.clone()
        out[r] = blend_outputs(out[r], from_source, None if mask is None else mask.reshape(frames, -1)).to(out.dtype)
        return out


class _FuseCross:
    def __init__(self, fusion, site):
        self.fusion, self.site = fusion, tuple(site)

    def to(self, device_or_dtype):
        return self

    def __call__(self, q, k, v, extra_options):
        f = self.fusion
        heads = int(extra_options["n_heads"])
        j = f.step_of(extra_options) if f.store is not None else None
        s = f.settings if f.store is not None else None
        records = s is not None and bool(s.target_blend_positions) and self.site in f.blend_sites
        if j is None or (j >= s.cross_steps and not records):
            return attn.attention(q, k, v, heads)
        cond_or_uncond, frames = video_batch(q.shape[0], extra_options)
        if 0 not in cond_or_uncond:
            return attn.attention(q, k, v, heads)
        r = group_rows(cond_or_uncond.index(0), frames)
        out = attn.attention(q, k, v, heads).clone()
        p_tgt = attn.attention_probs(q[r], k[r], heads)
        if records:
            f.add_target_attention(self.site, p_tgt)
        if j >= s.cross_steps:  # outside the window: the edit's own attention, not reweighted
            return out
        if p_tgt.shape[-1] != s.alignment.matrix.shape[0]:
            raise STEMError(f"the target conditioning has {p_tgt.shape[-1]} tokens; FateZero editing supports "
                                f"one {MAX_TOKENS}-token chunk (prompts up to 75 tokens)")
        p_src = f.store.get(store_step(j, f.steps), "cross", self.site, device=q.device)
        p = fuse_cross(p_src, p_tgt, s.alignment, 1.0, s.eq)
        out[r] = attn.apply_probs(p, v[r], heads).to(out.dtype)
        return out


# ------------------------------------------------------------------------------------------------
# the editing loop


def check_recorded_windows(store: AttentionStore, settings: "FusionSettings", latent_blend: bool):
    """STEMError when the edit would read maps the store did not record (the store keeps only its windows)."""
    info = store.info
    if "recorded" not in info:
        return
    for kind, wanted, fraction in (("self", settings.self_steps, "self_fraction"),
                                   ("cross", settings.cross_steps, "cross_fraction")):
        have = fused_steps(info[fraction], store.steps)
        if wanted > have:
            raise STEMError(f"the edit fuses {kind}-attention in {wanted} of {store.steps} steps but the store recorded "
                            f"{have} ({kind}_replace_steps {info[fraction]} on STEM Attention Store)",
                            input_name=f"{kind}_replace_steps",
                            fix=f"lower {kind}_replace_steps here, or raise it on STEM Attention Store and invert again")
    if (settings.blend_positions or (latent_blend and settings.target_blend_positions)) and not info["blend_masks"]:
        raise STEMError("blend words need the blend masks, which the store did not record", input_name="blend_words",
                        fix="turn blend_masks on in STEM Attention Store and invert again, or leave blend_words empty")


def site_modes(settings, sites) -> dict:
    """Self-attention mode of each site under a model's VideoAttentionSettings (None: a plain model)."""
    if settings is None:
        return {s: "per_frame" for s in sites}
    if settings.mode == "stem" and settings.variant == "released":
        raise STEMError("FateZero editing needs the paper's STEM variant; the released variant's per-head bases "
                        "cannot be matched between source and edit", input_name="variant",
                        fix="set variant 'paper' on STEM Video Attention")
    return {s: (settings.mode if s in settings.layers else "per_frame") for s in sites}


def edit_loop(trajectory: InversionTrajectory, fusion: "FusionPatches", latent_blend: bool, on_step=None):
    """The edit's DDIM sampling loop ``loop(denoise, x, sigmas) -> x`` (sampler space): the fusion patches
    read the store inside ``denoise``; with ``latent_blend`` (and blend words) the latents outside the latent
    mask (source words OR target words, :meth:`FusionPatches.latent_mask`) are reset to the inverted source
    latents in FateZero's window; the mean self-attention blend mask is recorded. The source latent is the one at
    the level the edited latent has just reached (FateZero's step_callback pairs it one level noisier)."""
    steps = trajectory.steps
    h, w = trajectory.latent_size
    use_latent_blend = bool(latent_blend) and bool(fusion.settings.blend_positions or
                                                    fusion.settings.target_blend_positions)

    def loop(denoise, x, sigmas):
        for j in range(steps):
            denoised = denoise(x, sigmas[j])
            x = ddim_step(x, denoised, sigmas[j], sigmas[j + 1])
            mask = fusion.latent_mask(j, x.shape[-2:], device=x.device) if use_latent_blend and \
                latent_blend_active(j, steps) else None
            if mask is not None:
                src = trajectory.latent_at_sampling_step(j + 1).to(x)
                x = src + mask.to(x.dtype)[:, None] * (x - src)
            fusion.record_output_mask(j, (8 * h, 8 * w))
            if on_step is not None:
                on_step(j, steps)
        return x
    return loop
