"""Shared helpers turning per-call ViT patch scores into per-image tensors."""

from __future__ import annotations

import torch


def stack_calls(scores: list[torch.Tensor]) -> torch.Tensor:
    """Calls made with a batch of images (n, T) -> one (N_images, T) tensor in call order."""
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in scores], dim=0)


def align_cls(scores: torch.Tensor, strategy: str) -> torch.Tensor:
    """CLS-row scores cover the patches only; with the ``full`` strategy the CLS token is a visual token too, and it
    gets ``-inf`` so it is never selected."""
    if strategy == "default":
        return scores
    return torch.cat([torch.full_like(scores[:, :1], float("-inf")), scores], dim=1)
