"""Plain-torch reference for the re-weighted attention: the CPU path and the oracle the Triton kernel is tested against.

It materialises the (B, H, M, N) score matrix, so it is only for small shapes, CPU inference of small models and tests.
The semantics are defined here once; ``triton_attention.py`` must agree with this file to dtype tolerance.

Order of operations per (batch row b, query head h, query row i, key j), all in fp32 (fp64 if the inputs are fp64):

1. ``s = scale * <q_i, k_j>`` (GQA: query head h reads kv head ``h // (Hq // Hkv)``).
2. Dual-stream / PAI emphasis on the query rows whose key position ``N - M + i`` is ``>= amp_start`` (default
   ``None`` = the last query row only): ``s += amp[b, h, c_j] * |s|``. A later start lets a cache-free forward
   re-run every generated token's row exactly as the cached decode steps did.
3. Multiplicative re-weighting with renormalisation: ``s += log_bias[b, h, c_j]`` (``-inf`` removes a class).
4. Masking: ``mask[b, 0|h, i, j]`` (True = attend); with ``mask=None`` and M > 1 the queries are the last M keys and
   causal; fully masked rows produce zeros, never NaN.
5. ``P = softmax(s)``.
6. VAR (only where ``var_p[b, h] > 0`` and the query token is not visual): with S = mass on sink keys (text and visual
   sinks), V = mass on visual keys, V_s = mass on visual sink keys, V_ns = V - V_s, the row is *image-centric* when
   ``V >= var_min_mass`` and ``V_ns / V >= var_rho`` (and V_ns > 0). Then sink keys are scaled by ``1 - p`` and visual
   non-sink keys by ``1 + p * S / V_ns``; the row still sums to one.
7. ``O = P @ V``, then ``O *= head_scale[b, h]`` (VHR).

The query token's class is the class of key position ``N - M + i`` (queries are the last M keys in every use: prefill,
chunked prefill and decode).

VAR's SINK bits may come separately (``SinkBits``): they are OR-ed into the key classes before step 2, and a decode
step may leave the new key's bit to the kernel, which tests the token's hidden state itself (see ``SinkBits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from .classes import NUM_CLASSES, SINK, VISUAL

STATS = ("lse", "class_mass", "last_row_probs")


@dataclass
class SinkBits:
    """Per-layer SINK bits kept beside the shared sequence classes: key j's class is ``key_class[j] | bits[first + j]``.

    bits:     (B, >= first + N) int32, ``SINK`` or 0 per sequence position.
    first:    the column of key 0 (a sliding-window layer sees only the last keys of the sequence).
    hidden:   optional (B, D) or (B, 1, D) hidden state of the query token entering the layer, for a decode step (one
              query row; the second form is a decode layer's input as it comes, with no per-call slicing).
              The kernel then decides the new key's bit itself and writes it into ``bits[:, first + N - 1]`` before
              using it: ``max_c |h_c| * threshold >= sqrt(||h||^2 + eps_norm^2)`` over ``channels``, ``>`` when
              ``strict``, in fp32. With ``threshold = sqrt(D) / tau`` and ``eps_norm = sqrt(D * eps)`` that is
              ``max_c |h_c| / sqrt(mean(h^2) + eps) >= tau``, the sink test of ``heads.sinks``.

    Why: the test on the host is seven small launches per layer and generated token, on a decode path that the host
    already paces; inside the decode kernel it costs one read of the hidden row.
    """

    bits: torch.Tensor
    first: int = 0
    hidden: torch.Tensor | None = None
    channels: torch.Tensor | None = None
    threshold: float = 0.0
    eps_norm: float = 0.0
    strict: bool = False

    def check_columns(self, n: int) -> None:
        """Raises unless ``bits`` has a column for each of ``n`` keys from ``first``."""
        if self.bits.shape[1] < self.first + n:
            raise ValueError(f"SinkBits.bits holds {self.bits.shape[1]} columns; keys need columns up to "
                             f"{self.first + n}")


def new_key_is_sink(sb: SinkBits) -> torch.Tensor:
    """(B,) bool: the test ``SinkBits`` describes, on ``sb.hidden``, in fp32 (fp64 for fp64 states)."""
    h = sb.hidden.reshape(sb.hidden.shape[0], sb.hidden.shape[-1])
    h = h.double() if h.dtype == torch.float64 else h.float()
    peak = h.index_select(-1, sb.channels.to(h.device)).abs().amax(-1) * sb.threshold
    bound = (h * h).sum(-1) + sb.eps_norm ** 2
    lhs = peak * peak
    return lhs > bound if sb.strict else lhs >= bound


def fold_sink_bits(key_class: torch.Tensor | None, sb: SinkBits, n: int, m: int) -> torch.Tensor:
    """(B, N) classes with the SINK bits OR-ed in; runs (and records) the new key's test when ``sb.hidden`` is set."""
    sb.check_columns(n)
    if sb.hidden is not None:
        if m != 1:
            raise ValueError(f"SinkBits.hidden tests the new key of a decode step (one query row), got {m} rows")
        hit = new_key_is_sink(sb)
        col = sb.first + n - 1
        sb.bits[:, col] = torch.where(hit, SINK, 0).to(sb.bits.dtype)
    bits = sb.bits[:, sb.first:sb.first + n]
    return bits.to(torch.int32) if key_class is None else key_class | bits


@dataclass
class ReweightParams:
    """Per-(batch, head, class) parameters of every effect; ``None`` means the effect is off.

    key_class:  (B, N) integer bit field (see ``classes.py``). Required when any table below is given.
    log_bias:   (B, H, 16) fp32 additive score bias = log of a multiplicative weight (renormalised by the softmax).
    amp:        (B, H, 16) fp32 PAI/PAINT emphasis ``s + amp * |s|`` applied on the last query row (or, with
                ``amp_start``, on every query row whose key position is >= amp_start).
    var_p:      (B, H) fp32 fraction of sink mass moved to visual non-sink keys (0 = VAR off for that head).
    var_rho:    minimum visual non-sink share of the visual mass for a row to be image-centric.
    var_min_mass: minimum visual mass for a row to be image-centric.
    head_scale: (B, H) fp32 multiplier of each head's output (VHR).
    sink_bits:  ``SinkBits`` OR-ed into ``key_class`` (VAR); on its own it changes no output.
    """

    key_class: torch.Tensor | None = None
    log_bias: torch.Tensor | None = None
    amp: torch.Tensor | None = None
    amp_start: int | None = None
    var_p: torch.Tensor | None = None
    var_rho: float = 0.5
    var_min_mass: float = 0.2
    head_scale: torch.Tensor | None = None
    sink_bits: SinkBits | None = None

    @property
    def is_identity(self) -> bool:
        return self.log_bias is None and self.amp is None and self.var_p is None and self.head_scale is None


def _expand_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _per_key(table: torch.Tensor, key_class: torch.Tensor) -> torch.Tensor:
    """(B, H, 16) table gathered at (B, N) classes -> (B, H, 1, N)."""
    b, h, _ = table.shape
    idx = key_class.long().unsqueeze(1).expand(b, h, -1)
    return torch.gather(table, 2, idx).unsqueeze(2)


def allowed_mask(mask: torch.Tensor | None, m: int, n: int, device) -> torch.Tensor:
    """Boolean (B|1, 1|H, M, N) of allowed (query, key) pairs; ``None`` means causal with the queries last."""
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"attention masks must be boolean (True = attend), got {mask.dtype}")
        return mask
    if m == 1:
        return torch.ones(1, 1, 1, n, dtype=torch.bool, device=device)
    q_pos = torch.arange(n - m, n, device=device).unsqueeze(1)
    k_pos = torch.arange(n, device=device).unsqueeze(0)
    return (k_pos <= q_pos).view(1, 1, m, n)


def var_multipliers(probs: torch.Tensor, key_class: torch.Tensor, query_visual: torch.Tensor, var_p: torch.Tensor,
                    rho: float, min_mass: float) -> torch.Tensor:
    """VAR's post-softmax multiplier per (b, h, i, j); the paper's Eq. 4 written as a per-class scale.

    probs: (B, H, M, N); key_class: (B, N); query_visual: (B, M) bool; var_p: (B, H).
    """
    cls = key_class.long().unsqueeze(1).unsqueeze(1)  # (B,1,1,N)
    is_sink = (cls & SINK) != 0
    is_vis = (cls & VISUAL) != 0
    sink_mass = (probs * is_sink).sum(-1, keepdim=True)
    vis_mass = (probs * is_vis).sum(-1, keepdim=True)
    vns_mass = (probs * (is_vis & ~is_sink)).sum(-1, keepdim=True)
    p = var_p.to(probs.dtype).view(*var_p.shape, 1, 1)
    selected = (
        (p > 0)
        & ~query_visual.view(query_visual.shape[0], 1, -1, 1)
        & (vis_mass >= min_mass)
        & (vns_mass > 0)
        & (vns_mass >= rho * vis_mass)
    )
    gain = 1 + p * sink_mass / torch.where(vns_mass > 0, vns_mass, torch.ones_like(vns_mass))
    mult = torch.where(is_sink, 1 - p, torch.where(is_vis, gain, torch.ones_like(gain)))
    return torch.where(selected, mult, torch.ones_like(mult))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, mask: torch.Tensor | None = None,
              params: ReweightParams | None = None, want: Iterable[str] = ()) -> tuple[torch.Tensor, dict]:
    """Re-weighted attention. q: (B, Hq, M, D); k, v: (B, Hkv, N, D). Returns ((B, M, Hq, D) in q.dtype, stats).

    stats (only those in ``want``): ``lse`` (B, H, M) log-sum-exp of the final scores (before VAR, which keeps rows
    normalised); ``class_mass`` (B, H, M, 16) softmax mass per key class before VAR; ``last_row_probs`` (B, H, N) the
    final attention probabilities of the last query row (after VAR).
    """
    want = set(want)
    unknown = want - set(STATS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; supported: {list(STATS)}")
    params = params or ReweightParams()
    b, hq, m, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    kk = _expand_kv(k.to(acc), hq // hkv)
    vv = _expand_kv(v.to(acc), hq // hkv)
    s = torch.matmul(q.to(acc), kk.transpose(-1, -2)) * scale  # (B,H,M,N)

    cls = params.key_class
    if params.sink_bits is not None:
        cls = fold_sink_bits(cls, params.sink_bits, n, m)
    if cls is None and (params.log_bias is not None or params.amp is not None or params.var_p is not None):
        raise ValueError("key_class is required when log_bias, amp or var_p is given")
    if params.amp is not None:
        amp = _per_key(params.amp.to(acc), cls)  # (B,H,1,N)
        start = n - 1 if params.amp_start is None else params.amp_start
        rows = (torch.arange(n - m, n, device=q.device) >= start).view(1, 1, m, 1)
        s = torch.where(rows, s + amp * s.abs(), s)
    if params.log_bias is not None:
        s = s + _per_key(params.log_bias.to(acc), cls)

    allowed = allowed_mask(mask, m, n, q.device)
    s = s.masked_fill(~allowed, float("-inf"))
    row_max = s.amax(-1, keepdim=True)
    finite = torch.isfinite(row_max)
    e = torch.exp(s - torch.where(finite, row_max, torch.zeros_like(row_max)))
    denom = e.sum(-1, keepdim=True)
    probs = torch.where(denom > 0, e / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(e))

    stats = {}
    if "lse" in want:
        lse = (row_max + torch.log(denom)).squeeze(-1)
        stats["lse"] = torch.where(denom.squeeze(-1) > 0, lse, torch.full_like(lse, float("-inf")))
    if "class_mass" in want:
        onehot = torch.nn.functional.one_hot(cls.long(), NUM_CLASSES).to(acc) if cls is not None else None
        if onehot is None:
            mass = torch.zeros(b, hq, m, NUM_CLASSES, dtype=acc, device=q.device)
            mass[..., 0] = probs.sum(-1)
        else:
            mass = torch.einsum("bhmn,bnc->bhmc", probs, onehot)
        stats["class_mass"] = mass

    if params.var_p is not None:
        query_visual = (cls[:, n - m:].long() & VISUAL) != 0
        probs = probs * var_multipliers(probs, cls, query_visual, params.var_p.to(acc), params.var_rho,
                                        params.var_min_mass)
    if "last_row_probs" in want:
        stats["last_row_probs"] = probs[:, :, -1]

    out = torch.matmul(probs, vv)  # (B,H,M,D)
    if params.head_scale is not None:
        out = out * params.head_scale.to(acc).view(b, hq, 1, 1)
    return out.transpose(1, 2).contiguous().to(q.dtype), stats
