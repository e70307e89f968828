"""Gemma 3: SigLIP tower without CLS, average-pooled to ``mm_tokens_per_image`` tokens.

Its text masks are not plain causal (bidirectional image blocks at prefill, sliding-window layers whose cache keeps
only the last window), so the attention function consumes the given mask and aligns key classes to the cropped keys.
"""

from __future__ import annotations

import torch

from ..adapter import FamilyAdapter, register
from ._scores import stack_calls


@register
class Gemma3Adapter(FamilyAdapter):
    model_types = ("gemma3",)
    vision_has_cls = False

    def vision_tower(self):
        return self.model.model.vision_tower

    def patch_scores_to_tokens(self, scores, forward_kwargs):
        per_image = stack_calls(scores)
        projector = self.model.model.multi_modal_projector
        side = projector.patches_per_image
        grid = per_image.view(-1, 1, side, side)
        return projector.avg_pool(grid).flatten(1).reshape(-1)
