"""LLaVA-1.5 (``llava``): CLIP tower with CLS, projector, Llama/Vicuna decoder; one visual token per patch."""

from __future__ import annotations

from ..adapter import FamilyAdapter, register
from ._scores import align_cls, stack_calls


def feature_layer_index(vision_feature_layer, n_layers: int) -> int:
    """The ViT layer whose *output* is ``hidden_states[vision_feature_layer]`` (hidden_states[0] = embeddings)."""
    layer = vision_feature_layer[-1] if isinstance(vision_feature_layer, (list, tuple)) else vision_feature_layer
    return (n_layers + layer if layer < 0 else layer - 1) if layer != 0 else 0


@register
class LlavaAdapter(FamilyAdapter):
    model_types = ("llava",)
    vision_has_cls = True

    def vision_tower(self):
        return self.model.model.vision_tower

    def summary_layer(self) -> int:
        return feature_layer_index(self.config.vision_feature_layer, len(self.vision_attention_modules()))

    def patch_scores_to_tokens(self, scores, forward_kwargs):
        strategy = getattr(self.config, "vision_feature_select_strategy", "default")
        return align_cls(stack_calls(scores), strategy).reshape(-1)
