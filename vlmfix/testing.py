"""Offline builders for tests across the project: a tiny, randomly initialised LLaVA with a real processor.

Nothing is downloaded: the vision tower, the language model, the image processor and the tokenizer are all assembled
from small configs and an in-memory word-level vocabulary, so tests exercise the real Hugging Face code paths
(``<image>`` expansion, left padding, ``generate``) in well under a second.
"""

from __future__ import annotations

import json

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
PROMPT_WORDS = (
    "USER : ASSISTANT is there a an in the image ? . , yes no not please describe this detail answer question using "
    "single word or phrase one with it has of and on to i see"
).split()
YES_NO = ["yes", "no", "Yes", "No", "Is", "Please", "There", "The", "A", "Answer"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% else %} ASSISTANT: {% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def default_vocab() -> list[str]:
    """Special tokens, the eval prompt words, yes/no and the COCO category words (each word of each name)."""
    from .eval.chair import coco_vocabulary

    words = list(SPECIAL_TOKENS) + PROMPT_WORDS + YES_NO
    for name in sorted(coco_vocabulary().categories):
        words.extend(name.split())
    return list(dict.fromkeys(words))


def tiny_tokenizer(vocab=None):
    """A ``PreTrainedTokenizerFast`` over a word-level vocabulary (whitespace + punctuation pre-tokenisation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(list(SPECIAL_TOKENS) + list(vocab or default_vocab())))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    bos = words.index("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", bos)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                 unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    hf.padding_side = "left"
    return hf


def tiny_llava(seed: int = 0, vocab=None, image_size: int = 28, patch_size: int = 14, hidden_size: int = 32,
               num_layers: int = 2, num_heads: int = 4, init_std: float | None = None):
    """``(model, processor)``: a 2+2-layer ``LlavaForConditionalGeneration`` (fp32, eval mode) and a real
    ``LlavaProcessor`` whose ``<image>`` expands to (image_size / patch_size)^2 tokens (4 by default).

    ``init_std`` re-draws every weight matrix from N(0, init_std): at the default 0.02 a random tiny model gives the
    same answer to every input, while ~0.3 makes answers depend on the image and the question, which tests of
    batching, sharding and resumption need to be meaningful."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    try:  # the PIL backend needs no torchvision; older releases only have the one class
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    tokenizer = tiny_tokenizer(vocab)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    n_image_tokens = (image_size // patch_size) ** 2
    vision = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                              num_attention_heads=num_heads, image_size=image_size, patch_size=patch_size,
                              projection_dim=hidden_size)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                       max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         image_seq_length=n_image_tokens, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    if init_std is not None:
        gen_ = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, param in sorted(model.named_parameters()):
                if param.dim() >= 2:
                    param.copy_(torch.randn(param.shape, generator=gen_) * init_std)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = (tokenizer.pad_token_id, tokenizer.eos_token_id,
                                                            tokenizer.bos_token_id)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size},
                                         do_center_crop=True, do_resize=True)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               num_additional_image_tokens=1, image_token="<image>")
    processor.tokenizer.padding_side = "left"
    return model, processor


def solid_image(color=(128, 64, 32), size: int = 32):
    """A small RGB PIL image (tests need images without any files)."""
    from PIL import Image

    return Image.new("RGB", (size, size), color)


def write_tiny_coco(root, images: dict, captions: dict | None = None, split: str = "val", categories=None,
                    image_size: int = 32):
    """Write a COCO-format world under ``root``: ``annotations/instances_<split>.json``, ``captions_<split>.json``
    and ``images/<file>.jpg``. ``images`` maps image id → list of category names (one instance each); ``captions``
    maps image id → list of reference captions. Returns ``(annotations_dir, images_dir)``."""
    from pathlib import Path

    root = Path(root)
    ann_dir, img_dir = root / "annotations", root / "images"
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    names = list(categories or dict.fromkeys(n for objs in images.values() for n in objs))
    cats = [{"id": i + 1, "name": n, "supercategory": "thing"} for i, n in enumerate(names)]
    cat_id = {c["name"]: c["id"] for c in cats}
    imgs, anns = [], []
    for image_id, objs in images.items():
        fname = f"COCO_{split}_{image_id:012d}.jpg"
        shade = (image_id * 37) % 256
        solid_image((shade, 255 - shade, (shade * 7) % 256), image_size).save(img_dir / fname)
        imgs.append({"id": image_id, "file_name": fname, "width": image_size, "height": image_size})
        for name in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[name],
                         "bbox": [0, 0, 4, 4], "area": 16.0, "iscrowd": 0})
    (ann_dir / f"instances_{split}.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": imgs, "annotations": anns, "categories": cats}))
    caps = []
    for image_id, texts in (captions or {}).items():
        for t in texts:
            caps.append({"id": len(caps) + 1, "image_id": image_id, "caption": t})
    (ann_dir / f"captions_{split}.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": imgs, "annotations": caps}))
    return ann_dir, img_dir


__all__ = ["tiny_llava", "tiny_tokenizer", "default_vocab", "solid_image", "write_tiny_coco"]
