"""Does the testbed model have massive activations (VAR's sink tokens)? Per layer, the largest |x_d| / RMS(x).

    python benchmarks/testbed_sinks.py > benchmarks/results/testbed_sinks.json

Eight held-out scenes with the detailed-description prompt; the residual stream entering each decoder layer.
VAR's sink test is phi = max_{d in D_sink} |x_d| / RMS(x) >= tau = 20; phi can never exceed sqrt(hidden size).
"""

from __future__ import annotations

import json

import torch
from PIL import Image

import vlmfix
from vlmfix.testbed import default_eval_world, load_model


def main():
    model, processor = load_model()
    root = default_eval_world()
    images = [Image.open(p).convert("RGB") for p in sorted((root / "images").iterdir())[:8]]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Please describe this image in detail."}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    layers = []
    for layer, h in enumerate(hidden[:-1]):  # hidden[l] enters layer l; the last entry is after the final norm
        h = h.float()
        ratio = h.abs() / h.pow(2).mean(-1, keepdim=True).sqrt()
        top, dims = ratio.amax(dim=(0, 1)).topk(3)
        layers.append({"layer": layer, "top_dims": dims.tolist(), "max_ratio": [round(x, 2) for x in top.tolist()]})
    found = {tau: list(vlmfix.heads.find_sink_dims(model, dict(inputs), tau=tau).dims) for tau in (20.0, 10.0, 6.0)}
    print(json.dumps({"hidden_size": hidden[0].shape[-1], "sqrt_hidden": round(hidden[0].shape[-1] ** 0.5, 2),
                      "layers": layers, "find_sink_dims": found}, indent=1))


if __name__ == "__main__":
    main()
