"""Batched generation with a Hugging Face processor: chat-templated prompts, left padding, new tokens only.

Left padding keeps every row's last prompt token at the same position so one ``generate`` call serves a batch; only
the tokens after the prompt are decoded so answers never echo the question.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import EvalInputError
from .models import model_device

FALLBACK_TEMPLATE = "USER: {image}\n{text} ASSISTANT:"


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; greedy by default, the setting every reference harness uses for its headline numbers."""

    max_new_tokens: int = 128
    num_beams: int = 1

    def record(self) -> dict:
        return {"strategy": "greedy" if self.num_beams == 1 else f"beam{self.num_beams}", "do_sample": False,
                **asdict(self)}


def build_prompt(processor, text: str) -> str:
    """One user turn holding the image and the text, rendered with the processor's chat template (the LLaVA-1.5
    "USER: <image>\\n... ASSISTANT:" layout when the processor has none)."""
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", None) or "<image>"
    return FALLBACK_TEMPLATE.format(image=image_token, text=text)


def prompt_format(processor) -> str:
    return "chat_template" if getattr(processor, "chat_template", None) else "fallback:" + FALLBACK_TEMPLATE


def load_image(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise EvalInputError(f"cannot read image {path}: {exc}; expected an image file PIL can open") from None


def generate_batch(model, processor, images, texts, decoding: Decoding, carve=None) -> list[str]:
    """Answers for parallel lists of PIL images and user texts (with a CARVE config: its final answers, per sample)."""
    import torch

    if carve is not None:
        import vlmfix

        return [vlmfix.carve(model, processor, image, text, config=carve).answer.strip()
                for image, text in zip(images, texts)]

    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.padding_side = "left"
    prompts = [build_prompt(processor, t) for t in texts]
    inputs = processor(images=list(images), text=prompts, padding=True, return_tensors="pt")
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) if hasattr(v, "to") else v
              for k, v in inputs.items()}
    pad_id = getattr(tok, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tok, "eos_token_id", None)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=decoding.max_new_tokens, do_sample=False,
                             num_beams=decoding.num_beams, pad_token_id=pad_id)
    new = out[:, inputs["input_ids"].shape[1]:]
    decode = processor.batch_decode if hasattr(processor, "batch_decode") else tok.batch_decode
    return [t.strip() for t in decode(new, skip_special_tokens=True)]
