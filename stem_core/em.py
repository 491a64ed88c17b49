"""Expectation-maximisation basis estimation for STEM inversion.

Paper: "A Video is Worth 256 Bases" (Li et al.), section 4.3-4.4. For the features X of ALL frames of a
video at one self-attention layer (M = N*H*W tokens, C channels) EM finds K bases mu:

    E-step (Eq. 8-9):   Z[m, k] = softmax_k( x_m . mu_k / tau )
    M-step (Eq. 10-11): mu_k    = sum_m Z[m, k] x_m / sum_m Z[m, k]

Layout used throughout this module: x [G, M, C] holds G independent problems (for example cond/uncond
halves of a batch, or attention heads), each with M tokens of C channels; bases are [G, K, C] and
responsibilities [G, M, K] (token-major, the transpose of the paper's K x M matrix Z).

All arithmetic is done in float32 (float64 stays float64) whatever the input dtype, so fp16/bf16 features
give the same bases as fp32 up to the final cast.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import STEMError

__all__ = [
    "EMResult",
    "check_em_settings",
    "RESPONSIBILITY_BUDGET_BYTES",
    "DEAD_BASIS_MASS",
    "e_step",
    "m_step",
    "estimate_bases",
    "released_variant_bases",
]

# Above this many bytes for a full [G, M, K] responsibility tensor the E/M steps run over token chunks
# (48 frames at 64x64 tokens, K = 256, G = 2 would otherwise need ~400 MB per iteration).
RESPONSIBILITY_BUDGET_BYTES = 256 * 1024 * 1024

# Shifted logits below -EXP_FLOOR are clamped before exp() (exp(-80) ~ 1.8e-35 is still a normal float32).
EXP_FLOOR = 80.0

# A basis whose total responsibility is below this (in tokens' worth of mass) is "dead": dividing its
# weighted sum by ~0 gives Inf/NaN (seen on clustered features), so it keeps its previous value instead.
DEAD_BASIS_MASS = 1e-6
# The released code's epsilon in the bases' normalisation and in the M-step's denominator.
RELEASED_EPS = 1e-4

_INITS = ("tokens", "gaussian")


@dataclass
class EMResult:
    """Outcome of :func:`estimate_bases`.

    bases: [G, K, C] in the input dtype.
    responsibilities: [G, M, K] float32 (float64 for float64 input), the responsibilities of the last
        E-step (those that produced ``bases``); only filled when requested, else None. With
        ``iterations=0`` they are the E-step of the initial bases.
    objective: one float per iteration, the mean over groups and tokens of the soft maximum
        ``tau * logsumexp_k(x_m . mu_k / tau)`` seen by that iteration's E-step (a cheap convergence
        diagnostic; with tau -> 0 it is the mean best-basis similarity).
    num_bases: K actually used (smaller than requested when clamped to M).
    """

    bases: torch.Tensor
    responsibilities: Optional[torch.Tensor] = None
    objective: List[float] = field(default_factory=list)
    num_bases: int = 0


# ----------------------------------------------------------------------------------------------------
# validation helpers


def _as_int(value, name: str, hint: str) -> int:
    if isinstance(value, bool):
        raise STEMError(f"{name} must be an integer, got {value!r}; {hint}")
    try:
        return operator.index(value)
    except TypeError:
        raise STEMError(f"{name} must be an integer, got {value!r}; {hint}") from None


def _check_tau(tau) -> float:
    try:
        tau_value = float(tau)
    except (TypeError, ValueError):
        raise STEMError(f"tau must be a positive number, got {tau!r}; use the paper's default 0.05") from None
    if not math.isfinite(tau_value) or tau_value <= 0.0:
        raise STEMError(
            f"tau (temperature) must be a finite number > 0, got {tau!r}; use the paper's default 0.05 "
            "(smaller values approach k-means)"
        )
    return tau_value


def _check_features(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise STEMError(f"{name} must be a torch.Tensor of shape [G, M, C], got {type(x).__name__}")
    if x.dim() != 3:
        raise STEMError(
            f"{name} must be 3-D [G, M, C] (groups, tokens of all frames, channels), got shape "
            f"{tuple(x.shape)}; flatten frames and pixels into M, e.g. x.reshape(G, -1, C)"
        )
    if not x.is_floating_point():
        raise STEMError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[0] < 1:
        raise STEMError(f"{name} must have at least one group, token and channel, got shape {tuple(x.shape)}")
    if not _all_finite(x):
        raise STEMError(
            f"the features ({name}) contain NaN/Inf; check the input latents / conditioning "
            "(and the model's precision: fp16 overflow produces Inf)"
        )


def _all_finite(x: torch.Tensor) -> bool:
    """True when every element of x is finite, in one reduction pass.

    A NaN or Inf element makes the (float32/float64) sum NaN or Inf; a finite sum therefore proves
    every element finite. Only when the sum is not finite (a NaN/Inf, or an overflow of huge finite
    values) is the exact elementwise test run.
    """
    total = x.sum(dtype=_compute_dtype(x.dtype))
    if bool(torch.isfinite(total)):
        return True
    return bool(torch.isfinite(x).all())


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16/bf16 sums over 10^5 tokens lose most of their digits; float64 callers keep float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _resolve_chunk(chunk_tokens, groups: int, tokens: int, num_bases: int, itemsize: int) -> int:
    if chunk_tokens is None:
        bytes_per_token = groups * num_bases * itemsize
        if tokens * bytes_per_token <= RESPONSIBILITY_BUDGET_BYTES:
            return tokens
        return max(1, RESPONSIBILITY_BUDGET_BYTES // bytes_per_token)
    chunk = _as_int(chunk_tokens, "chunk_tokens", "pass a positive token count or None for automatic chunking")
    if chunk < 1:
        raise STEMError(
            f"chunk_tokens must be >= 1, got {chunk}; pass a positive token count or None for automatic chunking"
        )
    return min(chunk, tokens)


# ----------------------------------------------------------------------------------------------------
# core passes


class Workspace:
    """A reusable buffer for the E-step's [G, chunk, K] logits, so that EM over every layer at every step does
    not ask the allocator for a fresh block of up to RESPONSIBILITY_BUDGET_BYTES each time (on the CPU such
    blocks come from and go back to the kernel: measured as system time and page faults, bench/README.md).
    Holds one tensor; ``view(shape, dtype, device)`` returns a view of it, growing it when needed."""

    def __init__(self):
        self.buffer: Optional[torch.Tensor] = None

    def view(self, shape, dtype: torch.dtype, device) -> torch.Tensor:
        numel = math.prod(shape)
        b = self.buffer
        if b is None or b.dtype != dtype or b.device != torch.device(device) or b.numel() < numel:
            self.buffer = b = torch.empty(numel, dtype=dtype, device=device)
        return b[:numel].view(shape)

    def release(self):
        self.buffer = None


def _chunk_responsibilities(x_chunk: torch.Tensor, bases_t: torch.Tensor, inv_tau: float,
                            workspace: Optional[Workspace] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Responsibilities of one token chunk.

    x_chunk [G, c, C] and bases_t [G, C, K] in the compute dtype -> (z [G, c, K], logsumexp [G, c]) with the
    logsumexp of the logits, i.e. the per-token soft maximum divided by tau. With a workspace z is a view of its
    buffer (valid until the next chunk).
    """
    shape = (x_chunk.shape[0], x_chunk.shape[1], bases_t.shape[2])
    if workspace is None:
        logits = torch.bmm(x_chunk, bases_t)
    else:
        logits = torch.bmm(x_chunk, bases_t, out=workspace.view(shape, x_chunk.dtype, x_chunk.device))
    logits.mul_(inv_tau)
    # Max-subtraction keeps exp() finite for any tau; dividing by the sum (rather than subtracting a
    # logsumexp) makes every row sum to 1 to rounding. In place: one [G, c, K] buffer.
    row_max = logits.amax(dim=-1, keepdim=True)
    # Clamping the shifted logits at -EXP_FLOOR changes no responsibility by more than exp(-80) ~ 2e-35
    # (each row's maximum contributes exp(0) = 1 to the sum) but keeps exp() out of its underflow range:
    # with a small tau most logits sit hundreds below the row maximum, and exp() of such values takes a
    # slow path on x86 CPUs (4-5x slower E-step measured, bench/README.md) and yields denormals.
    z = logits.sub_(row_max).clamp_min_(-EXP_FLOOR).exp_()
    row_sum = z.sum(dim=-1, keepdim=True)
    z.div_(row_sum)
    lse = (row_max + row_sum.log()).squeeze(-1)
    return z, lse


def _em_pass(
    x: torch.Tensor,
    estep_bases: torch.Tensor,
    tau: float,
    chunk: int,
    values: Optional[torch.Tensor] = None,
    keep_responsibilities: bool = False,
    normalize_x: bool = False,
    workspace: Optional[Workspace] = None,
):
    """One fused E-step + M-step accumulation over token chunks.

    x [G, M, C] (any float dtype), estep_bases [G, K, C] in the compute dtype, values [G, M, Cv] optional
    (weighted by the same responsibilities, for the released variant's value bases). With ``normalize_x`` the
    E-step scores L2-normalised tokens (the M-step still averages the raw tokens).
    Returns (sum_zx [G, K, C], mass [G, K], sum_zv [G, K, Cv] or None, z [G, M, K] or None,
    objective scalar tensor). Work per chunk: two batched matmuls plus a softmax.
    """
    compute = estep_bases.dtype
    groups, tokens, channels = x.shape
    num_bases = estep_bases.shape[1]
    bases_t = estep_bases.transpose(1, 2)
    inv_tau = 1.0 / tau

    sum_zx = torch.zeros(groups, num_bases, channels, dtype=compute, device=x.device)
    mass = torch.zeros(groups, num_bases, dtype=compute, device=x.device)
    sum_zv = None
    if values is not None:
        sum_zv = torch.zeros(groups, num_bases, values.shape[2], dtype=compute, device=x.device)
    z_all = None
    if keep_responsibilities:
        z_all = torch.empty(groups, tokens, num_bases, dtype=compute, device=x.device)
    lse_total = torch.zeros((), dtype=compute, device=x.device)

    for start in range(0, tokens, chunk):
        stop = min(start + chunk, tokens)
        # Cast per chunk so fp16 inputs never need a full fp32 copy of x.
        x_chunk = x[:, start:stop].to(compute)
        z, lse = _chunk_responsibilities(F.normalize(x_chunk, dim=-1) if normalize_x else x_chunk, bases_t, inv_tau,
                                         workspace)
        z_t = z.transpose(1, 2)
        sum_zx.baddbmm_(z_t, x_chunk)
        mass.add_(z.sum(dim=1))
        if values is not None:
            sum_zv.baddbmm_(z_t, values[:, start:stop].to(compute))
        if z_all is not None:
            z_all[:, start:stop] = z
        lse_total = lse_total + lse.sum()

    objective = lse_total * (tau / (groups * tokens))
    return sum_zx, mass, sum_zv, z_all, objective


def _finish_m_step(weighted_sum: torch.Tensor, mass: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
    """weighted_sum [G, K, C], mass [G, K] -> weighted means [G, K, C]; dead bases keep ``previous``.

    Live bases are divided exactly (so they stay convex combinations of tokens); a dead basis takes its
    previous value when given, otherwise the guarded division (weighted sum / DEAD_BASIS_MASS, ~0).
    """
    alive = mass >= DEAD_BASIS_MASS
    means = weighted_sum / mass.clamp_min(DEAD_BASIS_MASS).unsqueeze(-1)
    if previous is not None:
        means = torch.where(alive.unsqueeze(-1), means, previous.to(means.dtype))
    return means


# ----------------------------------------------------------------------------------------------------
# public steps


def e_step(x: torch.Tensor, bases: torch.Tensor, tau: float) -> torch.Tensor:
    """Responsibilities (paper Eq. 8-9).

    x [G, M, C], bases [G, K, C] -> z [G, M, K] in float32 (float64 for float64 input): for every token a
    softmax over the K bases of x_m . mu_k / tau, computed with max-subtraction.
    """
    _check_features(x)
    tau_value = _check_tau(tau)
    if bases.dim() != 3 or bases.shape[0] != x.shape[0] or bases.shape[2] != x.shape[2]:
        raise STEMError(
            f"bases must be [G, K, C] = [{x.shape[0]}, K, {x.shape[2]}] to match x {tuple(x.shape)}, "
            f"got {tuple(bases.shape)}"
        )
    compute = _compute_dtype(x.dtype)
    z, _ = _chunk_responsibilities(x.to(compute), bases.to(compute).transpose(1, 2), 1.0 / tau_value)
    return z


def m_step(x: torch.Tensor, z: torch.Tensor, previous_bases: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Basis update (paper Eq. 10-11): responsibility-weighted means of the tokens.

    x [G, M, C], z [G, M, K] -> bases [G, K, C] in x.dtype. A basis with (near) zero responsibility mass
    keeps its value from ``previous_bases`` ([G, K, C]) when given instead of dividing by ~0, so the bases
    are always finite.
    """
    _check_features(x)
    if z.dim() != 3 or z.shape[0] != x.shape[0] or z.shape[1] != x.shape[1]:
        raise STEMError(
            f"responsibilities z must be [G, M, K] = [{x.shape[0]}, {x.shape[1]}, K] to match x "
            f"{tuple(x.shape)}, got {tuple(z.shape)}"
        )
    if previous_bases is not None and previous_bases.shape != (x.shape[0], z.shape[2], x.shape[2]):
        raise STEMError(
            f"previous_bases must be [G, K, C] = {(x.shape[0], z.shape[2], x.shape[2])}, "
            f"got {tuple(previous_bases.shape)}"
        )
    compute = _compute_dtype(x.dtype)
    z_c = z.to(compute)
    weighted_sum = torch.bmm(z_c.transpose(1, 2), x.to(compute))
    means = _finish_m_step(weighted_sum, z_c.sum(dim=1), previous_bases)
    return means.to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# initialisation


def _initial_bases(x: torch.Tensor, num_bases: int, init: str, seed: int, compute: torch.dtype) -> torch.Tensor:
    """x [G, M, C] -> initial bases [G, K, C] in the compute dtype, drawn from a CPU generator seeded by
    ``seed`` so the result is the same on every device."""
    groups, tokens, channels = x.shape
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    if init == "tokens":
        # K distinct token indices per group: the top-K of uniform noise is a uniform random K-subset.
        scores = torch.rand(groups, tokens, generator=generator)
        indices = scores.topk(num_bases, dim=1).indices.to(x.device)
        picked = torch.gather(x, 1, indices.unsqueeze(-1).expand(groups, num_bases, channels))
        return picked.to(compute)
    # "gaussian": per-group, per-channel mean and std of the features (the authors' released-code style).
    noise = torch.randn(groups, num_bases, channels, generator=generator, dtype=torch.float64)
    noise = noise.to(device=x.device, dtype=compute)
    mean = torch.zeros(groups, 1, channels, dtype=compute, device=x.device)
    sq = torch.zeros(groups, 1, channels, dtype=compute, device=x.device)
    step = max(1, RESPONSIBILITY_BUDGET_BYTES // max(1, groups * channels * 8))
    for start in range(0, tokens, step):
        chunk = x[:, start : start + step].to(compute)
        mean += chunk.sum(dim=1, keepdim=True)
        sq += chunk.square().sum(dim=1, keepdim=True)
    mean /= tokens
    var = (sq / tokens - mean.square()).clamp_min(0.0)
    if tokens > 1:
        var = var * (tokens / (tokens - 1))
    return mean + var.sqrt() * noise


def check_em_settings(num_bases, iterations, tau, init="tokens"):
    """The EM settings every caller validates the same way -> (K, R, tau); STEMError naming the input."""
    k = _as_int(num_bases, "num_bases (K)", "use the paper's default 256")
    if k < 1:
        raise STEMError(f"num_bases (K) must be >= 1, got {k}; use the paper's default 256")
    r = _as_int(iterations, "iterations (R)", "use the paper's default 3")
    if r < 0:
        raise STEMError(f"iterations (R) must be >= 0, got {r}; use the paper's default 3")
    if init not in _INITS:
        raise STEMError(f"init must be one of {_INITS}, got {init!r}")
    return k, r, _check_tau(tau)


def _validate_settings(x, num_bases, iterations, tau, seed, init, init_bases, name="x"):
    _check_features(x, name)
    k, r, tau_value = check_em_settings(num_bases, iterations, tau, init)
    seed_value = _as_int(seed, "seed", "pass an integer seed such as 0")
    groups, tokens, channels = x.shape
    if init_bases is not None:
        if not isinstance(init_bases, torch.Tensor) or init_bases.dim() != 3:
            raise STEMError(
                f"init_bases must be a [G, K, C] tensor, got "
                f"{tuple(init_bases.shape) if isinstance(init_bases, torch.Tensor) else type(init_bases).__name__}"
            )
        if init_bases.shape[0] != groups or init_bases.shape[2] != channels:
            raise STEMError(
                f"init_bases must be [G, K, C] = [{groups}, K, {channels}] to match x {tuple(x.shape)}, "
                f"got {tuple(init_bases.shape)}; warm-start only from bases of the same layer and batch layout"
            )
        if init_bases.shape[1] != k:
            raise STEMError(
                f"init_bases has K = {init_bases.shape[1]} bases but num_bases (K) = {k}; pass "
                f"num_bases={init_bases.shape[1]} or cold-start with init_bases=None"
            )
        if not bool(torch.isfinite(init_bases).all()):
            raise STEMError("init_bases contain NaN/Inf; cold-start with init_bases=None")
    elif k > tokens:
        warnings.warn(
            f"num_bases (K) = {k} exceeds the number of tokens M = {tokens}; using K = {tokens} "
            "(every token becomes a basis)",
            UserWarning,
            stacklevel=3,
        )
        k = tokens
    return k, r, tau_value, seed_value


# ----------------------------------------------------------------------------------------------------
# drivers


def _start(x, k, init, seed, init_bases, chunk_tokens=None):
    """(token chunk, initial bases [G, K, C] in the compute dtype) of an EM run on x [G, M, C]."""
    compute = _compute_dtype(x.dtype)
    groups, tokens, _ = x.shape
    chunk = _resolve_chunk(chunk_tokens, groups, tokens, k, torch.finfo(compute).bits // 8)
    if init_bases is not None:
        return chunk, init_bases.to(device=x.device, dtype=compute)
    return chunk, _initial_bases(x, k, init, seed, compute)


def estimate_bases(
    x: torch.Tensor,
    num_bases: int = 256,
    iterations: int = 3,
    tau: float = 0.05,
    *,
    seed: int = 0,
    init: str = "tokens",
    init_bases: Optional[torch.Tensor] = None,
    chunk_tokens: Optional[int] = None,
    normalize: bool = False,
    return_responsibilities: bool = False,
    workspace: Optional[Workspace] = None,
) -> EMResult:
    """Estimate K bases of the features x by R EM iterations (paper Alg. 1, Eq. 8-11).

    x: [G, M, C], G independent groups (cond/uncond, heads), M = all frames' tokens of a layer.
    num_bases: K (clamped to M with a warning when larger; not clamped for ``init_bases``).
    iterations: R >= 0 E+M iterations; 0 returns the initial bases.
    tau: softmax temperature > 0; tau -> 0 turns EM into (dot-product) k-means.
    seed: seeds the initialisation (same seed -> identical bases).
    init: "tokens" = K distinct tokens drawn at random; "gaussian" = N(mean, std) per channel of x.
    init_bases: [G, K, C] warm start (e.g. the previous denoising step's bases); overrides ``init``.
    chunk_tokens: loop the E/M steps over this many tokens at a time; None chooses automatically so a
        chunk's responsibilities stay under RESPONSIBILITY_BUDGET_BYTES. The result does not depend on it
        beyond float rounding.
    normalize: run the E-step on L2-normalised tokens and bases (cosine similarities / tau); the M-step still
        returns unnormalised weighted means of the raw tokens.
    return_responsibilities: also return the last responsibilities [G, M, K].
    workspace: a :class:`Workspace` whose buffer the E-steps reuse (one per caller: a patch keeps one for all
        layers and steps); None allocates per chunk.
    Returns an :class:`EMResult` with bases [G, K, C] in x.dtype.
    """
    k, r, tau_value, seed_value = _validate_settings(x, num_bases, iterations, tau, seed, init, init_bases)
    chunk, bases = _start(x, k, init, seed_value, init_bases, chunk_tokens)

    objectives = []
    responsibilities = None
    for iteration in range(r):
        estep_bases = F.normalize(bases, dim=-1) if normalize else bases
        keep = return_responsibilities and iteration == r - 1
        sum_zx, mass, _, z, objective = _em_pass(x, estep_bases, tau_value, chunk, keep_responsibilities=keep,
                                                 normalize_x=normalize, workspace=workspace)
        bases = _finish_m_step(sum_zx, mass, previous=bases)
        objectives.append(objective)
        if keep:
            responsibilities = z

    if return_responsibilities and r == 0:
        estep_bases = F.normalize(bases, dim=-1) if normalize else bases
        _, _, _, responsibilities, _ = _em_pass(x, estep_bases, tau_value, chunk, keep_responsibilities=True,
                                                normalize_x=normalize, workspace=workspace)

    history = torch.stack(objectives).tolist() if objectives else []
    return EMResult(bases=bases.to(x.dtype), responsibilities=responsibilities, objective=history, num_bases=k)


def released_variant_bases(
    k: torch.Tensor,
    v: torch.Tensor,
    num_bases: int,
    iterations: int = 5,
    tau: float = 0.01,
    seed: int = 0,
    init_bases: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The authors' released-code EM (STEM-Inv/stem-inv, TokenFlow-Edit/tokenflow_utils.py: initialize, e_step,
    m_step, em): bases of the projected keys per head, values from the same Z.

    k, v: [G, M, d] projected keys/values (G = batch groups * heads, M = tokens of the frames of one UNet batch,
    8 frames in the reference's configs, d = head dim). Gaussian init from the keys' per-channel statistics
    (seeded here; a fresh global-RNG draw there), bases normalised as mu / (|mu| + 1e-4) in every E-step (the
    keys are not), tau = 0.01 and 5 iterations by default, M-step z / (sum z + 1e-4). After the last E-step the
    key bases are the M-step of k and the value bases the same responsibility-weighted mean of v.
    Returns (k_bases [G, K, d], v_bases [G, K, d_v]) in k.dtype / v.dtype.
    """
    num_k, r, tau_value, seed_value = _validate_settings(
        k, num_bases, iterations, tau, seed, "gaussian", init_bases, name="k"
    )
    _check_features(v, "v")
    if v.shape[:2] != k.shape[:2]:
        raise STEMError(
            f"v must have the same groups and tokens [G, M] as k: k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if r < 1:
        raise STEMError(
            f"iterations (R) must be >= 1 for the released variant (the value bases need one E-step), got {r}; "
            "use the released default 5"
        )
    chunk, bases = _start(k, num_k, "gaussian", seed_value, init_bases)
    v_bases = None
    for iteration in range(r):
        last = iteration == r - 1
        # the reference's epsilons: mu / (|mu| + 1e-4) in the E-step, z / (sum z + 1e-4) in the M-step
        estep_bases = bases / (bases.norm(dim=-1, keepdim=True) + RELEASED_EPS)
        sum_zk, mass, sum_zv, _, _ = _em_pass(k, estep_bases, tau_value, chunk, values=v if last else None)
        denominator = (mass + RELEASED_EPS).unsqueeze(-1)
        bases = sum_zk / denominator
        if last:
            v_bases = sum_zv / denominator
    return bases.to(k.dtype), v_bases.to(v.dtype)
