"""Quickstart: patch a VLM with each method, generate, compare with the unpatched model, unpatch.

Runs offline on the embedded testbed model when it is installed, else on a tiny random LLaVA built on the spot.
    python demos/quickstart.py
"""

from __future__ import annotations

import time

import torch

import vlmfix


def load():
    try:
        from vlmfix.testbed import default_eval_world, load_model

        model, processor = load_model()
        root = default_eval_world(n_images=8)
        from PIL import Image

        image = Image.open(sorted((root / "images").iterdir())[0]).convert("RGB")
        return model, processor, image, "testbed"
    except Exception as err:  # noqa: BLE001 - any missing piece falls back to the tiny model
        from vlmfix.testing import solid_image, tiny_llava

        print(f"(testbed model unavailable: {err}; using a tiny random LLaVA)")
        model, processor = tiny_llava(init_std=0.3, image_size=56, num_layers=4)
        return model, processor, solid_image(size=56), "tiny random LLaVA"


def answer(model, processor, image, prompt, max_new_tokens=40):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True), seconds


def main():
    model, processor, image, name = load()
    prompt = "Please describe this image in detail."
    print(f"model: {name}   prompt: {prompt!r}\n")
    rows = [("baseline", None)]
    rows += [("VAR", vlmfix.VAR()), ("VHR", vlmfix.VHR()), ("dual-stream", vlmfix.DualStream()),
             ("VAR+VHR+dual-stream", [vlmfix.DualStream(), vlmfix.VAR(), vlmfix.VHR()])]
    baseline = None
    for label, methods in rows:
        if methods is None:
            text, seconds = answer(model, processor, image, prompt)
            baseline = text
        else:
            methods = methods if isinstance(methods, list) else [methods]
            with vlmfix.patched(model, *methods):
                text, seconds = answer(model, processor, image, prompt)
        same = "" if label == "baseline" else ("  (same as baseline)" if text == baseline else "")
        print(f"[{label:>20s}] {seconds:5.2f}s  {text}{same}")
    again, _ = answer(model, processor, image, prompt)
    print(f"\nunpatched again == baseline: {again == baseline}")
    result = vlmfix.carve(model, processor, image, "What is the main object in the image?")
    print(f"CARVE: baseline answer {result.baseline_answer!r} -> refined answer {result.answer!r} "
          f"(kept {result.mask.float().mean().item():.0%} of the pixels)")


if __name__ == "__main__":
    main()
