"""CARVE (Ge et al., arXiv 2509.06461): the pure steps from two passes' attention maps to a refined image.

The question's attention on the image mixes "what the question is about" with "what is visually salient anyway";
dividing by the attention of a general instruction ("Write a general description of the image.") cancels the second:

    A_hat(l, t) = A_Q(l, t) / (A_G(l, t) + lam)                       (per layer l, step t; elementwise)
    S = sum_t w_t sum_l bilinear_to_pixels(A_hat(l, t))                  (saliency at image resolution)

A_*(l, t) is the last query row's attention over the visual tokens (softmax over all keys, head mean) in decoder
layer l at generation step t. S is then thresholded (top-p pixels), split into 4-connected regions, the K regions
with the largest attention sum are kept, the rest is blacked out, and the tight crop is magnified.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._label import label_components

STEP_MODES = ("last_token", "all_steps", "first_token")


def contrast(a_q: torch.Tensor, a_g: torch.Tensor, lam: float = 1e-8) -> torch.Tensor:
    """A_Q / (A_G + lam) elementwise (same shapes), at least float32; lam only guards the division (code 1e-8)."""
    if a_q.shape != a_g.shape:
        raise ValueError(f"a_q {tuple(a_q.shape)} and a_g {tuple(a_g.shape)} must have the same shape")
    dtype = torch.promote_types(torch.promote_types(a_q.dtype, a_g.dtype), torch.float32)
    return a_q.to(dtype) / (a_g.to(dtype) + lam)


def step_weights(n_steps: int, mode: str) -> torch.Tensor:
    """Fusion weight of each step, float32 (n_steps,): last_token -> one-hot last, all_steps -> t+1, first_token ->
    one-hot first (the paper's t_end, T_full with w_t = t - t_start + 1, and t_start)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if mode == "all_steps":
        return torch.arange(1, n_steps + 1, dtype=torch.float32)
    w = torch.zeros(n_steps, dtype=torch.float32)
    if mode == "last_token":
        w[-1] = 1.0
    elif mode == "first_token":
        w[0] = 1.0
    else:
        raise ValueError(f"unknown step mode {mode!r}; supported: {list(STEP_MODES)}")
    return w


def _check_maps(name: str, maps: Sequence[torch.Tensor], n_tokens: int) -> None:
    if len(maps) == 0:
        raise ValueError(f"{name} must hold at least one step")
    for t, m in enumerate(maps):
        if m.dim() != 2 or m.shape[1] != n_tokens:
            raise ValueError(f"{name}[{t}] must have shape (L, {n_tokens}) = (layers, grid_h*grid_w), "
                             f"got {tuple(m.shape)}")
    if len({m.shape[0] for m in maps}) != 1:
        raise ValueError(f"every step of {name} must have the same number of layers")


def fuse_maps(q_maps: Sequence[torch.Tensor], g_maps: Sequence[torch.Tensor], grid_hw: tuple[int, int],
              image_hw: tuple[int, int], mode: str = "last_token", lam: float = 1e-8) -> torch.Tensor:
    """Saliency (H_img, W_img) float32 from per-step (L, Nv) maps of the question pass and the general pass.

    Pairing: step t of one pass with step t of the other, over the first min(T_Q, T_G) steps (the official code),
    except ``last_token``, which pairs the *last* step of each pass: t_end means "the step that ended generation",
    and the two passes usually end at different steps. ``grid_hw`` is the visual token grid (rows, cols) and
    ``image_hw`` the image size as (height, width) (PIL's ``image.size`` is (width, height)).
    Maps are upsampled bilinearly (align_corners=False) and summed; since upsampling is linear, the weighted sum is
    taken on the token grid and upsampled once, which equals upsampling every map first.
    """
    gh, gw = (int(v) for v in grid_hw)
    _check_maps("q_maps", q_maps, gh * gw)
    _check_maps("g_maps", g_maps, gh * gw)
    if q_maps[0].shape[0] != g_maps[0].shape[0]:
        raise ValueError(f"q_maps have {q_maps[0].shape[0]} layers but g_maps have {g_maps[0].shape[0]}")
    if mode == "last_token":
        pairs = [(q_maps[-1], g_maps[-1])]
    else:
        n = min(len(q_maps), len(g_maps))
        pairs = list(zip(q_maps[:n], g_maps[:n]))
    weights = step_weights(len(pairs), mode)
    total = torch.zeros(gh * gw, dtype=torch.float32, device=q_maps[0].device)
    for w, (q, g) in zip(weights.tolist(), pairs):
        if w:
            total += w * contrast(q.float(), g.to(q.device).float(), lam).sum(dim=0)
    out = F.interpolate(total.reshape(1, 1, gh, gw), size=tuple(int(v) for v in image_hw), mode="bilinear",
                        align_corners=False)
    return out[0, 0]


def top_p_mask(saliency: torch.Tensor, p: float) -> torch.Tensor:
    """Bool (H, W): pixels >= the (1 - p) quantile of the saliency (linear interpolation, as ``np.percentile``).

    About a p fraction of the pixels survive (more with ties at the threshold); p = 1 keeps everything.
    """
    if saliency.dim() != 2:
        raise ValueError(f"saliency must have shape (H, W), got {tuple(saliency.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    flat = saliency.double().flatten().sort().values  # torch.quantile refuses inputs above 2**24 elements
    pos = (1.0 - p) * (flat.numel() - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, flat.numel() - 1)
    threshold = flat[lo] + (flat[hi] - flat[lo]) * (pos - lo)
    return saliency.double() >= threshold


def select_regions(mask: torch.Tensor, saliency: torch.Tensor, max_regions: int = 2) -> torch.Tensor:
    """Bool (H, W): the union of at most ``max_regions`` 4-connected regions of ``mask`` with the largest saliency sum.

    K is a true maximum, as the paper defines it (the official code keeps max(K, int(n * p)) regions). Equal sums
    keep the region whose first pixel comes first in raster order.
    """
    if mask.dim() != 2 or mask.shape != saliency.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and saliency {tuple(saliency.shape)} must both be (H, W)")
    if max_regions < 1:
        raise ValueError(f"max_regions must be >= 1, got {max_regions}")
    labels, n = label_components(mask.cpu().numpy())
    if n == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    sums = np.bincount(labels.ravel(), weights=saliency.double().cpu().numpy().ravel(), minlength=n + 1)[1:]
    keep = np.argsort(-sums, kind="stable")[:max_regions] + 1
    return torch.from_numpy(np.isin(labels, keep)).to(mask.device)


def refine_image(image, keep_mask, max_side_factor: float = 4.0):
    """Black out pixels outside ``keep_mask`` (H, W), crop to its tight bbox and magnify (LANCZOS, aspect kept).

    Scale = max(W / cw, H / ch) so the crop covers at least the original size (the paper's magnification), capped so
    that neither side exceeds ``max_side_factor`` times the original side: a thin crop (e.g. 2 px wide) would
    otherwise grow without bound. An empty mask returns the original image unchanged.
    """
    from PIL import Image

    keep = keep_mask.cpu().numpy() if isinstance(keep_mask, torch.Tensor) else np.asarray(keep_mask)
    keep = keep.astype(bool)
    width, height = image.size
    if keep.shape != (height, width):
        raise ValueError(f"keep_mask must have shape (H, W) = ({height}, {width}) for this image, got {keep.shape}")
    if not keep.any():
        return image
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")  # palette or exotic modes: black must mean black, not palette index 0
    pixels = np.array(image)
    pixels[~keep] = 0
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right]))
    cw, ch = right - left, bottom - top
    scale = min(max(width / cw, height / ch), max_side_factor * width / cw, max_side_factor * height / ch)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    return crop.resize(size, Image.Resampling.LANCZOS) if size != (cw, ch) else crop


def attention_entropy(maps: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Shannon entropy (nats) over the last dim, (..., Nv) -> (...): a diagnostic of how spread a map is.

    The paper (Eq. 3.3) correlates high entropy with failures. The raw visual slice of a softmax row does not sum to
    1, so by default each map is renormalised over the visual tokens first; 0 * log 0 counts as 0.
    """
    a = maps.double().clamp_min(0)
    if normalize:
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    return -(torch.special.xlogy(a, a)).sum(dim=-1).float()
