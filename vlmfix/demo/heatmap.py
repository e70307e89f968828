"""Turn recorded attention over image tokens into a picture a user can read.

``vlmfix.record_attention`` gives, per generated token, the attention of the last query row over the visual tokens
at a few layers. Averaged over layers and answer tokens this says where the answer "looked". The visual tokens are a
flattened patch grid, so the vector is reshaped to that grid, upsampled and blended over the image *as the model saw
it* (the same centre crop), otherwise the hot spots would be shifted against the picture.

No plotting library is needed: the colour map is a short list of anchor colours interpolated with numpy.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

DISPLAY_SIZE = 336

# dark violet -> red -> orange -> pale yellow: monotone in lightness, so intensity still reads in grey scale.
_ANCHORS = np.array([
    [0.00, 12, 7, 44],
    [0.25, 84, 15, 109],
    [0.50, 187, 55, 84],
    [0.75, 245, 125, 21],
    [1.00, 250, 230, 150],
], dtype=np.float64)


def colorize(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] (any shape) -> uint8 RGB of shape ``values.shape + (3,)``."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    channels = [np.interp(v, _ANCHORS[:, 0], _ANCHORS[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def mean_visual_attention(maps) -> np.ndarray | None:
    """Average ``rec.visual_maps()`` (a list over steps of ``(n_layers, N_visual)``) into one ``(N_visual,)`` vector.

    Steps whose visual count differs from the first (a model that adds images mid-answer) are skipped rather than
    mixed, so the result always refers to one image.
    """
    rows = []
    for step in maps or []:
        arr = step.detach().float().cpu().numpy() if hasattr(step, "detach") else np.asarray(step, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.size == 0 or (rows and arr.shape[-1] != rows[0].shape[-1]):
            continue
        rows.append(arr.mean(axis=0))
    if not rows:
        return None
    return np.mean(rows, axis=0).astype(np.float32)


def grid_shape(n_visual: int, model=None, inputs=None, image_size=None) -> tuple[int, int]:
    """Rows x columns of the patch grid behind ``n_visual`` visual tokens.

    Tries, in order: the processor's own grid (``image_grid_thw`` with the vision tower's spatial merge, as in
    Qwen2-VL), a square (LLaVA, Gemma 3, Idefics3 per tile), the base view of multi-view models (the first
    ``image_size // patch_size`` squared tokens, as in LLaVA-NeXT), and finally the factorisation closest to the
    picture's aspect ratio.
    """
    if inputs is not None and inputs.get("image_grid_thw") is not None:
        t, h, w = (int(x) for x in inputs["image_grid_thw"][0].tolist())
        merge = int(getattr(getattr(getattr(model, "config", None), "vision_config", None), "spatial_merge_size", 2)
                    or 1)
        if t * (h // merge) * (w // merge) == n_visual:
            return h // merge, w // merge
    side = math.isqrt(n_visual)
    if side * side == n_visual:
        return side, side
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    if vision is not None and getattr(vision, "patch_size", None) and getattr(vision, "image_size", None):
        base = int(vision.image_size) // int(vision.patch_size)
        if 0 < base * base <= n_visual:
            return base, base
    aspect = (image_size[1] / image_size[0]) if image_size else 1.0  # rows / cols
    best = (1, n_visual)
    for rows in range(1, n_visual + 1):
        if n_visual % rows == 0:
            cols = n_visual // rows
            if abs(math.log(rows / cols / aspect)) < abs(math.log(best[0] / best[1] / aspect)):
                best = (rows, cols)
    return best


def to_grid(vector: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The first rows*cols entries of ``vector`` as a ``(rows, cols)`` float32 array."""
    rows, cols = shape
    return np.asarray(vector[: rows * cols], dtype=np.float32).reshape(rows, cols)


def model_view(image: Image.Image, processor=None) -> Image.Image:
    """The part of ``image`` the vision tower sees: the centre square when the processor centre-crops."""
    ip = getattr(processor, "image_processor", None)
    if ip is not None and getattr(ip, "do_center_crop", False):
        w, h = image.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return image.crop((left, top, left + s, top + s))
    return image


def overlay(image: Image.Image, grid: np.ndarray, scale: tuple[float, float] | None = None, alpha: float = 0.6,
            size: int = DISPLAY_SIZE) -> Image.Image:
    """Blend ``grid`` over ``image`` resized to ``size`` on the long side.

    ``scale`` = (low, high) maps to the colour map's ends (default: the grid's own min and max). Passing one range
    for two maps lets them be compared by brightness, not only by shape.
    """
    image = image.convert("RGB")
    w, h = image.size
    k = size / max(w, h)
    out_w, out_h = max(1, round(w * k)), max(1, round(h * k))
    base = np.asarray(image.resize((out_w, out_h), Image.Resampling.BICUBIC), dtype=np.float32)
    lo, hi = scale if scale is not None else (float(grid.min()), float(grid.max()))
    norm = (grid - lo) / (hi - lo) if hi > lo else np.full_like(grid, 0.5)
    # float ("F" mode) resize keeps the smooth interpolation without 8-bit banding
    heat = Image.fromarray(np.clip(norm, 0, 1).astype(np.float32), mode="F").resize((out_w, out_h),
                                                                                     Image.Resampling.BILINEAR)
    colours = colorize(np.asarray(heat)).astype(np.float32)
    blended = (1 - alpha) * base + alpha * colours
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


__all__ = ["colorize", "mean_visual_attention", "grid_shape", "to_grid", "model_view", "overlay", "DISPLAY_SIZE"]
