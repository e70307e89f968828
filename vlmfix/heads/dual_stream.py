"""Dual-stream visual token selection (PAINT, Arif et al., arXiv 2501.12206): which image tokens the LLM should favour.

Two sets of visual tokens get their pre-softmax logits raised in the LLM:
- *local* tokens: the top 25% of patches by CLS attention in the vision tower's first layer (object detail);
- *summary* tokens: Tukey outliers (> Q3 + 1.5 IQR) of CLS attention in the feature layer (the ViT's high-norm,
  aggregating tokens). The official code removes summary tokens from the local set so the sets are disjoint.

Scores are computed from a ViT layer's q and k without materialising ``output_attentions``. Towers without a CLS
token (SigLIP, Qwen2-VL's ViT) use the mean attention each patch *receives* instead. Because the LLM sees merged
tokens for several projectors, patch scores are pooled the way each projector merges patches (``pool_scores``,
``avg_pool_scores``, ``pixel_shuffle_scores``); a positive rescaling does not change either selection, so sums and
means are interchangeable there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_2d(name: str, t: torch.Tensor, what: str = "(B, P)") -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape {what}, got {shape}")


def local_tokens(scores: torch.Tensor, ratio: float = 0.25) -> torch.Tensor:
    """Bool (B, P): the top int(P * ratio) patches of each row by score (ties: lower index first)."""
    _check_2d("scores", scores)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    b, p = scores.shape
    k = int(p * ratio)
    order = torch.argsort(scores.float(), dim=-1, descending=True, stable=True)[:, :k]
    out = torch.zeros(b, p, dtype=torch.bool, device=scores.device)
    return out.scatter_(1, order, True)


def summary_tokens(scores: torch.Tensor) -> torch.Tensor:
    """Bool (B, P): Tukey outliers of each row, score > Q3 + 1.5 * (Q3 - Q1), quartiles by linear interpolation.

    Linear interpolation between order statistics is numpy's default percentile (used by the official code) and
    ``torch.quantile``'s. Quartiles are computed in float64 so float32 scores compare exactly as numpy would.
    """
    _check_2d("scores", scores)
    s = scores.double()
    q = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype, device=s.device), dim=-1, keepdim=True)
    q1, q3 = q[0], q[1]
    return s > q3 + 1.5 * (q3 - q1)


def select_streams(local_scores: torch.Tensor, summary_scores: torch.Tensor,
                   ratio: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """(local, summary) bool (B, P) masks; summary tokens are removed from the local set so the two are disjoint."""
    _check_2d("local_scores", local_scores)
    _check_2d("summary_scores", summary_scores)
    if local_scores.shape != summary_scores.shape:
        raise ValueError(f"local_scores {tuple(local_scores.shape)} and summary_scores "
                         f"{tuple(summary_scores.shape)} must have the same (B, P) shape")
    summary = summary_tokens(summary_scores)
    return local_tokens(local_scores, ratio) & ~summary, summary


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape (B, H, T, D), got {shape}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share B, H and D in (B, H, T, D)")


def cls_attention(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """CLS-row attention over the patches, summed over heads: q, k (B, H, T, D) with token 0 = CLS -> (B, T-1).

    The softmax runs over all T keys (CLS included, as the vision tower computes it) and the CLS column is dropped
    afterwards, as the official code slices the patch columns of the attention map. ``scale`` defaults to D**-0.5.
    """
    _check_qk(q, k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhd,bhtd->bht", q[:, :, 0].float(), k.float()) * scale
    return logits.softmax(dim=-1).sum(dim=1)[:, 1:]


def received_attention(q: torch.Tensor, k: torch.Tensor, scale: float | None = None,
                       chunk: int = 1024) -> torch.Tensor:
    """Mean attention each token receives, summed over heads: q, k (B, H, T, D) -> (B, T).

    The CLS-free substitute for ``cls_attention`` (column sums of the attention map, averaged over queries; the row
    sums the official "spatial" stream used are all 1). Queries are processed in chunks so memory stays O(chunk * T).
    Towers that pack several images into one sequence with block-diagonal attention (Qwen2-VL) must be called per
    image, on that image's slice of q and k.
    """
    _check_qk(q, k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kf = k.float()
    total = torch.zeros(q.shape[0], k.shape[2], dtype=torch.float32, device=q.device)
    for start in range(0, q.shape[2], chunk):
        logits = torch.einsum("bhqd,bhtd->bhqt", q[:, :, start:start + chunk].float(), kf) * scale
        total += logits.softmax(dim=-1).sum(dim=(1, 2))
    return total / q.shape[2]


def pool_scores(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Sum over consecutive groups of ``group`` patches, (B, P) -> (B, P // group).

    Qwen2-VL's patch merger emits patches already ordered so that each run of merge**2 consecutive patches (a 2x2
    window) becomes one LLM token; pooling those runs maps patch scores onto LLM tokens.
    """
    _check_2d("scores", scores)
    if group < 1 or scores.shape[1] % group:
        raise ValueError(f"scores length {scores.shape[1]} must be a multiple of group={group}")
    return scores.reshape(scores.shape[0], -1, group).sum(dim=-1)


def _grid(scores: torch.Tensor, grid_hw: tuple[int, int], factor: int, what: str) -> torch.Tensor:
    _check_2d("scores", scores)
    h, w = (int(v) for v in grid_hw)
    if h * w != scores.shape[1]:
        raise ValueError(f"scores must have shape (B, {h}*{w}) for grid_hw={grid_hw}, got {tuple(scores.shape)}")
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"grid {h}x{w} must be divisible by {what}={factor}")
    return scores.float().reshape(scores.shape[0], 1, h, w)


def avg_pool_scores(scores: torch.Tensor, grid_hw: tuple[int, int], kernel: int) -> torch.Tensor:
    """Non-overlapping ``kernel`` x ``kernel`` average pool of a row-major (h, w) patch grid -> (B, h*w / kernel**2).

    Gemma 3 pools its 64x64 SigLIP grid 4x4 (stride 4) into 256 tokens, read back row-major.
    """
    x = _grid(scores, grid_hw, kernel, "kernel")
    return F.avg_pool2d(x, kernel, stride=kernel).flatten(1)


def pixel_shuffle_scores(scores: torch.Tensor, grid_hw: tuple[int, int], factor: int) -> torch.Tensor:
    """Patch scores mapped through Idefics3/SmolVLM's pixel shuffle: (B, h*w) -> (B, h*w / factor**2), summed.

    The shuffle folds each ``factor`` x ``factor`` block of the row-major patch grid into one token's channels, and
    the tokens come out row-major over the (h/factor, w/factor) block grid, so a token's score is its block's sum.
    """
    x = _grid(scores, grid_hw, factor, "factor")
    return F.avg_pool2d(x, factor, stride=factor).flatten(1) * (factor * factor)
