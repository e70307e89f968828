"""Vision-aware heads (VHR, He et al., ACL 2025, Eqs. 4-7): which attention heads to reinforce in a layer.

A head is vision-aware when its output moves a lot once the image is removed from the prompt. Per layer, at the last
prompt position and on per-head outputs *before* ``o_proj``:

    VHD_i = ||A_i(with image) - A_i(without image)||_2            (Eq. 4)
    TA_i  = ||A_i(without image)||_2^2                              (text-only output energy)
    VHD_i := 0  if VHD_i > mu(VHD) + sigma(VHD) and TA_i > mu(TA) + sigma(TA)   (Eq. 6)
    H     = { i : VHD_i > median(VHD) }                              (Eq. 7, "the first half" of the heads)

Eq. 6 removes heads whose large divergence comes from surging once the image is gone (a large text-only output),
not from using the image. Everything is per batch row, so a batch of prompts selects heads independently.
"""

from __future__ import annotations

import torch


def _check_heads(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 3:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape (B, H, D) (per-head outputs before o_proj), got {shape}")


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    _check_heads("out_with_image", a)
    _check_heads("out_without_image", b)
    if a.shape != b.shape:
        raise ValueError(f"out_with_image {tuple(a.shape)} and out_without_image {tuple(b.shape)} must have the "
                         "same (B, H, D) shape")


def head_divergence(out_with_image: torch.Tensor, out_without_image: torch.Tensor) -> torch.Tensor:
    """VHD per head, (B, H, D) x 2 -> (B, H) float32: L2 distance of each head's output with vs. without the image."""
    _check_pair(out_with_image, out_without_image)
    return (out_with_image.float() - out_without_image.float()).norm(dim=-1)


def text_norm_sq(out_without_image: torch.Tensor) -> torch.Tensor:
    """TA per head, (B, H, D) -> (B, H) float32: squared L2 norm of the image-free head output."""
    _check_heads("out_without_image", out_without_image)
    return out_without_image.float().pow(2).sum(dim=-1)


def _check_scores(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape (B, H), got {shape}")


def suppress_outliers(vhd: torch.Tensor, text_norm_sq: torch.Tensor, correction: int = 1) -> torch.Tensor:
    """Eq. 6: VHD with heads that are outliers (> mean + std over the row's heads) in *both* VHD and TA set to 0.

    The paper writes mu + sigma without saying which standard deviation; we use the sample std (``correction=1``,
    torch's default, as a torch implementation would get from ``.std()``); ``correction=0`` gives the population std.
    With H heads the two differ by sqrt(H/(H-1)), about 1.6% for 32 heads.
    """
    _check_scores("vhd", vhd)
    _check_scores("text_norm_sq", text_norm_sq)
    if vhd.shape != text_norm_sq.shape:
        raise ValueError(f"vhd {tuple(vhd.shape)} and text_norm_sq {tuple(text_norm_sq.shape)} must both be (B, H)")
    v, ta = vhd.float(), text_norm_sq.float()

    def high(x):
        return x > x.mean(dim=-1, keepdim=True) + x.std(dim=-1, keepdim=True, correction=correction)

    return torch.where(high(v) & high(ta), torch.zeros_like(v), v)


def select_heads(vhd: torch.Tensor, text_norm_sq: torch.Tensor, outlier_rule: bool = True,
                 correction: int = 1) -> torch.Tensor:
    """Vision-aware heads, bool (B, H): VHD (after Eq. 6 when ``outlier_rule``) strictly above the row's median.

    The median is torch's: the lower of the two middle values for an even head count, so with distinct VHDs exactly
    floor(H/2) heads are selected (16 of 32: "the first half"), the same count numpy's midpoint median would give.
    Ties at the median are not selected (strict ``>``), so tied rows select fewer heads; heads zeroed by Eq. 6 sit at
    the bottom and are never selected unless more than half of the row is zero.
    """
    if outlier_rule:
        v = suppress_outliers(vhd, text_norm_sq, correction)
    else:
        _check_scores("vhd", vhd)
        v = vhd.float()
    return v > v.median(dim=-1, keepdim=True).values
