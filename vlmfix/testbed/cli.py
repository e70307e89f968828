"""``vlmfix testbed``: build the synthetic world, retrain the testbed VLM, or query the shipped one.

Heavy imports (torch, transformers) happen inside the commands so that ``vlmfix --help`` stays fast.
"""

from __future__ import annotations

import json

import click


@click.group("testbed")
def testbed_group():
    """Synthetic COCO-style world and the small LLaVA trained on it."""


@testbed_group.command("world")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output root.")
@click.option("--n-images", default=500, show_default=True)
@click.option("--seed", default=20260, show_default=True, help="20260 is the held-out evaluation world.")
@click.option("--split", default="val", show_default=True)
@click.option("--p-partner", default=0.85, show_default=True, help="P(partner present | object present).")
@click.option("--workers", default=None, type=int, help="Parallel drawing processes (result is identical).")
def world_cmd(out_dir, n_images, seed, split, p_partner, workers):
    """Write images/, annotations/instances_<split>.json, captions_<split>.json and synonyms.json."""
    from .world import build_world

    root = build_world(out_dir, n_images, seed, split=split, p_partner=p_partner, workers=workers)
    click.echo(str(root))


@testbed_group.command("train")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--steps", default=None, type=int, help="Fixed step count (default: fill --time-budget).")
@click.option("--time-budget", default=210.0, show_default=True, help="Seconds of training when --steps is unset.")
@click.option("--n-train", default=40000, show_default=True, help="Training scenes.")
@click.option("--n-eval", default=500, show_default=True, help="Held-out scenes for POPE / CHAIR.")
@click.option("--batch-size", default=512, show_default=True)
@click.option("--lr", default=8e-4, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--workers", default=None, type=int)
@click.option("--seed", default=0, show_default=True)
def train_cmd(out_dir, steps, time_budget, n_train, n_eval, batch_size, lr, device, workers, seed):
    """Reproduce the shipped model: draw world, train, evaluate held-out scenes, save OUT/model + metrics.json."""
    from pathlib import Path

    from .train import train

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    log_file = open(Path(out_dir) / "train.log", "a")

    def log(msg):
        click.echo(msg)
        log_file.write(msg + "\n")
        log_file.flush()

    m = train(out_dir, n_train=n_train, steps=steps, time_budget=time_budget, batch_size=batch_size, lr=lr,
              device=device, workers=workers, n_eval=n_eval, seed=seed, log=log)
    click.echo(json.dumps({k: v for k, v in m.items() if k != "evals"}, indent=1))


@testbed_group.command("describe")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--prompt", default="Please describe this image in detail.", show_default=True)
@click.option("--max-new-tokens", default=96, show_default=True)
def describe_cmd(image, prompt, max_new_tokens):
    """Run the shipped testbed model on one image."""
    import torch
    from PIL import Image

    from . import load_model
    from .model import prompt_text

    model, proc = load_model()
    inputs = proc(text=prompt_text(prompt), images=Image.open(image).convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    click.echo(proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip())


@testbed_group.command("score")
@click.option("--n-images", default=500, show_default=True)
@click.option("--root", default=None, type=click.Path(file_okay=False), help="Eval world cache root.")
@click.option("--device", default="cpu", show_default=True)
def score_cmd(n_images, root, device):
    """Quick built-in POPE / CHAIR of the shipped model on the held-out world (no vlmfix.eval needed)."""
    from .quickeval import evaluate_world

    res = evaluate_world(n_images=n_images, root=root, device=device)
    click.echo(json.dumps(res, indent=1))


@testbed_group.command("info")
def info_cmd():
    """Print where the assets live and the model's shape."""
    from .model import ASSET_DIR

    cfg = ASSET_DIR / "config.json"
    click.echo(f"assets: {ASSET_DIR} ({'present' if cfg.exists() else 'missing'})")
    if cfg.exists():
        c = json.loads(cfg.read_text())
        t, v = c["text_config"], c["vision_config"]
        click.echo(f"decoder: {t['num_hidden_layers']} layers, hidden {t['hidden_size']}, "
                   f"{t['num_attention_heads']} heads / {t['num_key_value_heads']} kv; vision: "
                   f"{v['num_hidden_layers']} layers, hidden {v['hidden_size']}, {c['image_seq_length']} image tokens")
