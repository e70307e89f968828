"""Train the testbed VLM from scratch: world -> tokenizer -> LLaVA -> held-out POPE/CHAIR -> saved directory.

One call does everything so that a single GPU lease reproduces the shipped model. Training data mixes short captions,
detailed descriptions and yes/no object questions whose negatives are drawn uniformly from absent categories (no
extra weight on co-occurring absent objects), so the decoder keeps the world's co-occurrence prior. With
``time_budget`` the step count is fixed after a short speed calibration (and recorded), so the run ends inside its
lease; ``steps`` gives a fully fixed schedule.
"""

from __future__ import annotations

import json
import math
import os
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from .categories import BY_ID
from .model import (CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, NUM_IMAGE_TOKENS, build_model, build_processor,
                    build_tokenizer, prompt_text)
from .quickeval import evaluate, meets_spec
from .text import CAPTION_PROMPTS, DETAIL_PROMPT, QUESTION
from .world import EVAL_SEED, TRAIN_SEED, draw_arrays


def _draw_chunk(args):
    seed, lo, hi = args
    return draw_arrays(seed, range(lo, hi))


def draw_world(seed: int, n: int, workers: int):
    """Scenes ``0..n-1`` of ``seed`` in memory, drawn in parallel chunks (order and content independent of workers)."""
    step = max(1, math.ceil(n / (workers * 4)))
    chunks = [(seed, lo, min(n, lo + step)) for lo in range(0, n, step)]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_draw_chunk, chunks)
    else:
        parts = [_draw_chunk(c) for c in chunks]
    imgs = np.concatenate([p[0] for p in parts])
    scenes, caps, details = [], [], []
    for p in parts:
        scenes += p[1]
        caps += p[2]
        details += p[3]
    return imgs, scenes, caps, details


def make_examples(scenes, caps, details, seed: int, n_caption=2, n_pos=2, n_neg=2):
    """(image index, prompt, answer) triples. Negatives are uniform over absent categories."""
    rng = np.random.default_rng([seed, 17])
    all_ids = np.array(sorted(BY_ID))
    ex = []
    for i, (sc, cs, d) in enumerate(zip(scenes, caps, details)):
        for j in rng.permutation(len(cs))[:n_caption]:
            ex.append((i, CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))], cs[j]))
        ex.append((i, DETAIL_PROMPT, d))
        present = sc.category_ids
        for j in rng.permutation(len(present))[:n_pos]:
            ex.append((i, QUESTION.format(BY_ID[present[j]].name), "Yes"))
        absent = [c for c in all_ids if c not in present]
        for j in rng.permutation(len(absent))[:n_neg]:
            ex.append((i, QUESTION.format(BY_ID[int(absent[j])].name), "No"))
    return ex


def tokenize_examples(tok, examples):
    """Padded ids / labels with the single ``<image>`` expanded to the vision tower's token count."""
    prompts = [prompt_text(p) for _, p, _ in examples]
    fulls = [f"{prompt_text(p)} {a}</s>" for _, p, a in examples]
    p_ids = tok(prompts, add_special_tokens=True)["input_ids"]
    f_ids = tok(fulls, add_special_tokens=True)["input_ids"]
    img = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    extra = NUM_IMAGE_TOKENS - 1
    L = max(len(f) for f in f_ids) + extra
    ids = np.zeros((len(f_ids), L), np.int32)
    labels = np.full((len(f_ids), L), -100, np.int32)
    for k, (p, f) in enumerate(zip(p_ids, f_ids)):
        assert f[:len(p)] == p, "prompt tokens must prefix the full sequence"
        pos = f.index(img)
        seq = f[:pos] + [img] * NUM_IMAGE_TOKENS + f[pos + 1:]
        ids[k, :len(seq)] = seq
        labels[k, len(p) + extra:len(seq)] = seq[len(p) + extra:]
    return torch.from_numpy(ids), torch.from_numpy(labels)


def corpus(caps, details):
    """Every string the model will read or write, for the tokenizer."""
    yield from (c for cs in caps for c in cs)
    yield from details
    yield from (QUESTION.format(c.name) for c in BY_ID.values())
    yield from CAPTION_PROMPTS
    yield from (prompt_text(DETAIL_PROMPT) + " Yes No", "USER: ASSISTANT: Yes No")


def to_pixels(imgs_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> CLIP-normalised float NCHW (what CLIPImageProcessor yields for 112-px inputs)."""
    x = imgs_u8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def train(out_dir, n_train=40000, steps=None, time_budget=300.0, batch_size=512, lr=8e-4, device="cpu",
          workers=None, n_eval=500, seed=0, eval_points=(0.4, 0.55, 0.7, 0.85, 1.0), log=print,
          save_dtype=torch.bfloat16, ship_margin=1.5):
    """Build, train, evaluate and save; returns the metrics dict (also written to ``out_dir/metrics.json``)."""
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(16, os.cpu_count() or 1)
    torch.manual_seed(seed)
    dev = torch.device(device)
    imgs, scenes, caps, details = draw_world(TRAIN_SEED, n_train, workers)
    ev_imgs, ev_scenes, _, _ = draw_world(EVAL_SEED, n_eval, workers)
    log(f"world: {n_train} train / {n_eval} eval scenes in {time.time() - t0:.1f}s")

    tok = build_tokenizer(corpus(caps, details))
    processor = build_processor(tok)
    examples = make_examples(scenes, caps, details, seed)
    ids, labels = tokenize_examples(tok, examples)
    img_of = torch.tensor([e[0] for e in examples])
    log(f"tokenizer: {len(tok)} tokens; {len(examples)} examples, max len {ids.shape[1]} ({time.time() - t0:.1f}s)")

    model = build_model(len(tok), seed=seed).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters")
    images = torch.from_numpy(imgs).to(dev)
    ids, labels, img_of = ids.to(dev), labels.to(dev), img_of.to(dev)
    lengths = (ids != 0).sum(1)
    ev_pix = to_pixels(torch.from_numpy(ev_imgs)).cpu()
    ev_present = [s.category_ids for s in ev_scenes]
    ev_themes = [s.theme for s in ev_scenes]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), fused=dev.type == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    use_amp = dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    total = steps or 10**9
    warmup = 200 if steps is None or steps > 1000 else max(1, steps // 10)
    evals, snapshots = [], []
    t_train = time.time()
    step = 0
    eval_at = set()
    while step < total:
        if steps is None and step == 120:  # calibrate the step count against the time budget (after warm-up)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            per = (time.time() - t_calib) / 60
            total = max(100, int((time_budget - (time.time() - t_train)) / per) + step)
            eval_at = {int(total * f) for f in eval_points}
            log(f"calibrated: {per * 1000:.1f} ms/step -> {total} steps")
        if steps is not None and step == 0:
            eval_at = {max(1, int(total * f)) for f in eval_points}
        if step == 60:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_calib = time.time()
        frac = min(1.0, step / max(total, 1)) if total < 10**9 else 0.0
        cur = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur
        idx = torch.randint(0, ids.shape[0], (batch_size,), generator=gen).to(dev)
        L = int(lengths[idx].max())
        b_ids, b_lab = ids[idx, :L].long(), labels[idx, :L].long()
        pix = to_pixels(images[img_of[idx]])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = model(input_ids=b_ids, attention_mask=(b_ids != 0).long(), pixel_values=pix, labels=b_lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0 or step == total:
            log(f"step {step}/{total if total < 10**9 else '?'} loss {loss.item():.4f} lr {cur:.2e} "
                f"({time.time() - t_train:.0f}s)")
        if step in eval_at:
            model.eval()
            te = time.time()
            try:
                res = evaluate(model, tok, ev_pix, ev_present, ev_themes)
            except Exception as exc:  # keep the trained weights even if scoring breaks
                import traceback
                log(f"eval failed: {exc!r}\n{traceback.format_exc()}")
                res = {"pope": {s: {"accuracy": 0, "f1": 0} for s in ("random", "popular", "adversarial")},
                       "chair": {"chair_s": 0, "chair_i": 0, "recall": 0}, "samples": [""], "error": repr(exc)}
            res["step"] = step
            evals.append(res)
            snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            p = res["pope"]
            log(f"eval@{step} ({time.time() - te:.0f}s): POPE acc/F1 r {p['random']['accuracy']:.1f}/"
                f"{p['random']['f1']:.1f} p {p['popular']['accuracy']:.1f}/{p['popular']['f1']:.1f} "
                f"a {p['adversarial']['accuracy']:.1f}/{p['adversarial']['f1']:.1f}; "
                f"CHAIR s/i {res['chair']['chair_s']:.1f}/{res['chair']['chair_i']:.1f} "
                f"rec {res['chair']['recall']:.1f} ok={meets_spec(res)}")
            log(f"  sample: {res['samples'][0]}")
            model.train()
    train_time = time.time() - t_train

    ok = [i for i, r in enumerate(evals) if meets_spec(r)]
    safe = [i for i in ok if meets_spec(evals[i], margin=ship_margin)]
    pick = safe[-1] if safe else ok[-1] if ok else len(evals) - 1
    model.load_state_dict(snapshots[pick])
    model.eval()
    model.to(save_dtype)
    model.config.dtype = "bfloat16" if save_dtype == torch.bfloat16 else str(save_dtype).split(".")[-1]
    model_dir = out / "model"
    model.save_pretrained(model_dir, max_shard_size="15MB")
    processor.save_pretrained(model_dir)
    metrics = {
        "chosen_step": evals[pick]["step"], "chosen_meets_spec": pick in ok, "evals": evals,
        "train_steps": step, "train_seconds": train_time, "total_seconds": time.time() - t0,
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "n_train": n_train,
        "n_eval": n_eval, "batch_size": batch_size, "lr": lr, "seed": seed, "params": n_params,
        "examples": len(examples), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(f"saved {model_dir} (step {metrics['chosen_step']}, meets spec: {metrics['chosen_meets_spec']}) "
        f"total {metrics['total_seconds']:.0f}s")
    return metrics
