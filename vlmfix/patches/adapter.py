"""What vlmfix needs to know about a model family, and the registry that finds the right adapter.

An adapter answers four questions for one family: where the language model's decoder layers are, which token ids are
visual, where the vision tower's attention layers are (and how their patches become the LLM's visual tokens), and how
to build the image-free twin of a batch (VHR's exact mode). Adding a family = one small file in ``families/`` that
subclasses ``FamilyAdapter`` and registers itself, plus its tiny-config test.
"""

from __future__ import annotations

import torch
from torch import nn

_REGISTRY: dict[str, type["FamilyAdapter"]] = {}


def register(cls):
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


class UnsupportedModelError(ValueError):
    pass


def supported_model_types() -> list[str]:
    from . import families  # noqa: F401  (registers the built-in adapters)

    return sorted(_REGISTRY)


def adapter_for(model: nn.Module) -> "FamilyAdapter":
    from . import families  # noqa: F401

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnsupportedModelError(
            f"vlmfix does not support model type {model_type!r} ({type(model).__name__}); supported families: "
            f"{', '.join(sorted(_REGISTRY))}. To add a family, write an adapter: subclass vlmfix.patches.FamilyAdapter in a new file under "
            "vlmfix/patches/families/ (decoder layers, visual token ids, vision layers) and decorate it with @register."
        )
    return _REGISTRY[model_type](model)


class FamilyAdapter:
    """Defaults fit the common HF layout (``get_decoder().layers``, ``config.image_token_id``)."""

    model_types: tuple[str, ...] = ()
    #: the vision tower has a CLS token at position 0 of every image sequence
    vision_has_cls: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # -- language model -------------------------------------------------------------------------------------------
    def decoder_layers(self) -> list[nn.Module]:
        return list(self.model.get_decoder().layers)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.decoder_layers()]

    def image_encoder_owner(self) -> nn.Module:
        """The module whose ``get_image_features`` encodes images (what ``generate`` calls before the forward)."""
        return getattr(self.model, "model", self.model)

    def text_config(self):
        return self.config.get_text_config()

    def visual_token_ids(self) -> list[int]:
        ids = []
        for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
            value = getattr(self.config, name, None)
            if isinstance(value, int) and value >= 0 and value not in ids:
                ids.append(value)
        return ids

    # -- vision tower (dual-stream) ----------------------------------------------------------------------------------
    def vision_tower(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} has no vision-tower mapping")

    def vision_attention_modules(self) -> list[nn.Module]:
        """The tower's attention modules in layer order: the first ``ModuleList`` of blocks with an attention child.

        Searched rather than spelled out because towers nest differently across transformers releases
        (``vision_tower.vision_model.encoder.layers`` in one, ``vision_tower.encoder.layers`` in another).
        """
        for _, child in self.vision_tower().named_modules():
            if isinstance(child, nn.ModuleList) and len(child) and all(
                    hasattr(block, "self_attn") or hasattr(block, "attn") for block in child):
                return [getattr(block, "self_attn", None) or block.attn for block in child]
        raise RuntimeError(f"could not find the attention layers of {type(self.vision_tower()).__name__}")

    def summary_layer(self) -> int:
        """Index into ``vision_attention_modules`` of the layer whose output the projector consumes."""
        return len(self.vision_attention_modules()) - 1

    def patch_scores_to_tokens(self, scores: list[torch.Tensor], forward_kwargs: dict) -> torch.Tensor:
        """Per-call ViT patch scores (in call order) -> one score per LLM visual token, in sequence order."""
        raise NotImplementedError(f"{type(self).__name__} has no vision-tower mapping")

    # -- VHR exact mode --------------------------------------------------------------------------------------------
    #: per-row kwargs that must be extended with zeros for image-free rows
    row_kwargs: tuple[str, ...] = ("token_type_ids", "mm_token_type_ids")

    def image_free_batch(self, kwargs: dict, pad_token_id: int, image_kwargs: dict | None = None) -> dict:
        """The batch followed by its image-free twin: visual tokens removed, left-padded to one width.

        Pixel inputs are kept as they are: the image-free rows have no image tokens, so the model consumes the same
        images for the original rows only. Families whose pixel tensors are indexed by batch row override this.
        """
        ids, att = kwargs["input_ids"], kwargs.get("attention_mask")
        if att is None:
            att = torch.ones_like(ids)
        visual = torch.isin(ids, torch.tensor(self.visual_token_ids(), device=ids.device))
        stripped = [ids[i][(att[i] > 0) & ~visual[i]] for i in range(ids.shape[0])]
        width = max(ids.shape[1], max(len(s) for s in stripped))
        b = ids.shape[0]
        new_ids = torch.full((2 * b, width), pad_token_id, dtype=ids.dtype, device=ids.device)
        new_att = torch.zeros((2 * b, width), dtype=att.dtype, device=ids.device)
        new_ids[:b, width - ids.shape[1]:] = ids
        new_att[:b, width - ids.shape[1]:] = att
        for i, s in enumerate(stripped):
            new_ids[b + i, width - len(s):] = s
            new_att[b + i, width - len(s):] = 1
        out = {k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask", "past_key_values", "cache",
                                                             "cache_position", "position_ids", "inputs_embeds")}
        out.update(input_ids=new_ids, attention_mask=new_att, use_cache=False)
        for name, value in (image_kwargs or {}).items():  # arguments generate() moved into the encoder call
            out.setdefault(name, value)
        for name in self.row_kwargs:
            if kwargs.get(name) is not None:
                value = kwargs[name]
                twin = torch.zeros((2 * b, width), dtype=value.dtype, device=value.device)
                twin[:b, width - value.shape[1]:] = value
                out[name] = twin
        return out
