"""End-to-end ``generate`` speed and peak memory of patched VLMs against vanilla SDPA and eager attention.

    python benchmarks/generate.py [--models llava,qwen2_vl] [--batches 1,8] [--repeats 5] [--reference-repeats 2]
                                  [--out benchmarks/results]
                                  [--backends triton,torch] [--budget-s SECONDS] [--merge] [--quick] [--device cpu|cuda]

Models are built from their configs with random bf16 weights directly on the device (no download, no init cost):

* ``llava``: ``LlavaConfig()`` (CLIP ViT-L/14-336 + Llama-7B); text vocabulary 32064 as in llava-1.5-7b-hf, so that
  the default image token id (32000) is a row of the embedding table. 576 image tokens.
* ``qwen2_vl``: ``Qwen2VLConfig()``'s vision tower (ViT 32 x 1280, merger to 3584) with the Qwen2-VL-7B language
  model (3584 hidden, 28 layers, 28 query / 4 kv heads, M-RoPE sections 16/24/24); the bare ``Qwen2VLConfig()``
  text defaults are 72B-shaped (8192 x 80), so they are set to the 7B numbers here. One 336 x 336 image: a 24 x 24
  patch grid merged 2 x 2 = 144 image tokens.

Prompt per row: BOS + 3 text tokens + the image tokens (+ vision start/end for Qwen2-VL) + text up to 64 text tokens in
all; ``min_new_tokens = max_new_tokens = 128``, greedy. Every configuration is warmed up (a short generate that crosses
a multiple of 16 keys, so every kernel specialisation is compiled), run once more at full length without being kept
(``--discard-rounds``: on the H200 machine the first full-length round of every configuration ran up to 3x slow), then
timed ``--repeats`` times in rounds whose order alternates (forward, reversed, ...); medians are reported. Tokens/s = batch x new tokens / wall time of the whole
``generate`` call (prefill included), GPU synchronised before and after. Peak memory = ``max_memory_allocated`` after
``reset_peak_memory_stats`` (weights included), median over the timed runs; every model stays resident for the
whole run, so the bytes of the *other* models' weights are subtracted.

Random weights carry no massive activations, so VAR gets the model's sink channels explicitly and a ``tau``
calibrated on one unpatched prefill so that about ``--sinks`` prompt tokens per layer are sinks; the counts the
patched run actually used are printed and stored (``var_sinks_per_layer``, ``var_visual_sinks_per_layer``).
Dual-stream's local / summary token counts and VHR's selected heads per layer are stored the same way.

Methods: ``var``, ``vhr_fused``, ``vhr_exact``, ``dual_stream`` and ``all`` (VAR + VHR fused + dual-stream), each
through our kernels (``backend=triton``) and the torch reference (``backend=torch``). Phases run in priority order:
first vanilla + every method through the Triton backend for every (model, batch), then eager + the torch reference.
With ``--budget-s`` a phase starts only if its warm-ups and one timed round are estimated to fit, and a timed run
starts only if it is estimated to end inside the budget (``n_repeats`` says how many were timed); results are
rewritten after every timed run, so
an interrupted run leaves valid (partial) JSON and Markdown behind. On CUDA the warm-up generates run under the sync
debug mode, and the host-device synchronisations are counted by calling line (``warmup_syncs``).

``--profile METHOD`` replaces the timing by a torch-profiler capture of a 16-token generate of vanilla and of METHOD
(the first of ``--backends``) for each model and batch: ``profile_<model>_b<batch>_<method>.txt`` lists the top ops by host and by
device time, which is how a method's per-step cost is taken apart; ``..._python.txt`` is a cProfile of the same
generate (the Python between the ops, which the torch profiler does not see), by own and by cumulative time.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import vlmfix  # noqa: E402
from vlmfix.kernels import LOCAL, SUMMARY, VISUAL, triton_available  # noqa: E402
from vlmfix.heads.sinks import sink_scores  # noqa: E402
from gc_clock import GcClock  # noqa: E402

BARS = {"default": 0.90, "vhr_exact": 0.85}
MEM_BAR = 1.05
METHODS = ("var", "vhr_fused", "vhr_exact", "dual_stream", "all")
REFERENCE_PHASE = "eager + torch reference"
T0 = time.perf_counter()


def log(msg):
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Bench:
    name: str
    model: torch.nn.Module
    make_inputs: Callable[[int], dict]  # batch -> generate kwargs
    n_image_tokens: int
    sink_dims: tuple
    text_tokens: int
    prompt_len: int
    var_tau: float | None = None
    info: dict = field(default_factory=dict)


def _no_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older releases
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            import contextlib

            return contextlib.nullcontext()
    return no_init_weights()


@torch.no_grad()
def _fill_random(model, std=0.02, seed=0):
    """Small normal weights; norm scales 1 and biases 0, so activations stay finite through every layer."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            p.zero_()
        elif p.dim() == 1 and ("norm" in name or "ln" in name.split(".")[-2] or "layernorm" in name.lower()):
            p.fill_(1.0)
        elif p.dim() == 1:
            p.fill_(1.0) if "weight" in leaf else p.zero_()
        else:
            p.normal_(0.0, std, generator=g)
    for name, b in model.named_buffers():  # rotary inv_freq etc. are computed, not initialised: keep them
        if not torch.isfinite(b.float()).all():
            raise RuntimeError(f"buffer {name} is not finite")


def _build(cls, config, device, dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), _no_init():
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    # built under the bf16 default dtype, as from_config(torch_dtype=bf16) does: float32 buffers (rotary inverse
    # frequencies) stay float32, so no blanket .to(dtype)
    model = model.eval()
    _fill_random(model)
    return model


def _gen_config(model, pad, eos, bos):
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = pad, eos, bos
    gen.do_sample = False
    for k in ("temperature", "top_p", "top_k"):
        if hasattr(gen, k):
            setattr(gen, k, None)


def _text(n, vocab_hi, g):
    return torch.randint(3, vocab_hi, (n,), generator=g)


def direct_launch_plans() -> int:
    """Kernel launches cached for the direct path so far: one per call that went through Triton's own launch."""
    try:
        from vlmfix.kernels import triton_attention as ta
    except Exception:  # no Triton here
        return 0
    return sum(len(launch._plans) for launch in ta.direct_launches().values())


def build_llava(device, dtype, quick, text_tokens):
    import transformers as tf

    if quick:
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                     image_size=56, patch_size=14, projection_dim=32)
        text = tf.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
        cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_index=511, image_seq_length=16)
    else:
        cfg = tf.LlavaConfig()
        cfg.text_config.vocab_size = 32064  # llava-1.5-7b-hf: room for the image token id 32000
    image = cfg.vision_config.image_size
    n_img = (image // cfg.vision_config.patch_size) ** 2
    model = _build(tf.LlavaForConditionalGeneration, cfg, device, dtype)
    image_id = cfg.image_token_index if hasattr(cfg, "image_token_index") else cfg.image_token_id
    vocab_hi = min(cfg.text_config.vocab_size, 32000) - 1 if not quick else 500
    _gen_config(model, pad=0, eos=2, bos=1)
    g = torch.Generator().manual_seed(0)
    pre = 3

    def make_inputs(b):
        rows = [torch.cat([torch.tensor([1]), _text(pre, vocab_hi, g), torch.full((n_img,), image_id),
                           _text(text_tokens - 1 - pre, vocab_hi, g)]) for _ in range(b)]
        ids = torch.stack(rows).to(device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "pixel_values": torch.randn(b, 3, image, image, generator=g).to(device=device, dtype=dtype)}

    dims = (1415, 2533) if not quick else (7, 41)
    return Bench("llava", model, make_inputs, n_img, dims, text_tokens, text_tokens + n_img,
                 info={"text": "Llama 4096x32, 32 heads, vocab 32064" if not quick else "tiny",
                       "vision": f"CLIP {cfg.vision_config.num_hidden_layers}L {image}px"})


def build_qwen2_vl(device, dtype, quick, text_tokens):
    import inspect

    import transformers as tf

    if quick:
        text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=1024,
                    rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0))
        vision = dict(depth=3, embed_dim=32, hidden_size=64, num_heads=4, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, mlp_ratio=2)
        ids = dict(image_token_id=511, video_token_id=510, vision_start_token_id=509, vision_end_token_id=508)
        cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        grid = 8  # 112 px: 8 x 8 patches -> 16 tokens
    else:
        base = tf.Qwen2VLConfig()
        text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                    rope_parameters=dict(rope_type="default", mrope_section=[16, 24, 24], rope_theta=1000000.0))
        cfg = tf.Qwen2VLConfig(text_config=text, vision_config=base.vision_config.to_dict(),
                               image_token_id=base.image_token_id, video_token_id=base.video_token_id,
                               vision_start_token_id=base.vision_start_token_id,
                               vision_end_token_id=base.vision_end_token_id)
        grid = 24  # 336 px / 14
    v = cfg.vision_config
    merge = v.spatial_merge_size
    n_img = (grid // merge) ** 2
    model = _build(tf.Qwen2VLForConditionalGeneration, cfg, device, dtype)
    _gen_config(model, pad=0, eos=2, bos=1)
    vocab_hi = 150000 if not quick else 500
    wants_types = "mm_token_type_ids" in inspect.signature(model.model.forward).parameters
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2 if hasattr(v, "in_channels") else \
        3 * v.temporal_patch_size * v.patch_size ** 2
    g = torch.Generator().manual_seed(0)
    pre = 3  # BOS + 2 text + vision start; vision end after the image

    def make_inputs(b):
        rows = [torch.cat([torch.tensor([1]), _text(pre - 1, vocab_hi, g), torch.tensor([cfg.vision_start_token_id]),
                           torch.full((n_img,), cfg.image_token_id), torch.tensor([cfg.vision_end_token_id]),
                           _text(text_tokens - 2 - pre, vocab_hi, g)]) for _ in range(b)]
        ids = torch.stack(rows).to(device)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
               "pixel_values": torch.randn(b * grid * grid, patch_dim, generator=g).to(device=device, dtype=dtype),
               "image_grid_thw": torch.tensor([[1, grid, grid]] * b, device=device)}
        if wants_types:
            out["mm_token_type_ids"] = (ids == cfg.image_token_id).long()
        return out

    dims = (458, 2570) if not quick else (5, 33)
    return Bench("qwen2_vl", model, make_inputs, n_img, dims, text_tokens, text_tokens + n_img,
                 info={"text": "Qwen2 3584x28, 28/4 heads, vocab 152064" if not quick else "tiny",
                       "vision": f"ViT {v.depth}x{v.embed_dim}, grid {grid}x{grid} -> {n_img} tokens"})


BUILDERS = {"llava": build_llava, "qwen2_vl": build_qwen2_vl}


# --------------------------------------------------------------------------------------------------------------------
# methods and measurement
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def calibrate_tau(bench: Bench, target: float) -> float:
    """tau such that about ``target`` prompt tokens per VAR layer have phi >= tau on an unpatched batch-1 prefill."""
    model = bench.model
    inputs = bench.make_inputs(1)
    out = model(**inputs, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states if getattr(out, "hidden_states", None) is not None else out.language_model_outputs
    n_layers = model.config.get_text_config().num_hidden_layers
    layers = vlmfix.VAR(sink_dims=bench.sink_dims).resolve_layers(n_layers)
    phi = torch.stack([sink_scores(hs[i], bench.sink_dims)[0] for i in layers])  # (L, T)
    t = phi.shape[1]
    tau = float(torch.quantile(phi.float().flatten(), 1.0 - min(0.5, target / t)))
    counts = (phi >= tau).sum(1).float()
    log(f"{bench.name}: VAR tau calibrated to {tau:.3f} on dims {bench.sink_dims}: prefill sinks per layer "
        f"mean {counts.mean():.1f} (min {int(counts.min())}, max {int(counts.max())}) of {t} tokens")
    return tau


def method_specs(name: str, bench: Bench):
    var = vlmfix.VAR(sink_dims=bench.sink_dims, tau=bench.var_tau)
    return {
        "var": [var],
        "vhr_fused": [vlmfix.VHR(mode="fused")],
        "vhr_exact": [vlmfix.VHR(mode="exact")],
        "dual_stream": [vlmfix.DualStream()],
        "all": [var, vlmfix.VHR(mode="fused"), vlmfix.DualStream()],
    }[name]


def method_stats(model, prompt_len: int) -> dict:
    """What the methods actually selected in the last generate: sinks, dual-stream tokens, VHR heads."""
    handle = vlmfix.get_patch(model)
    out = {}
    for rt in handle.session.runtimes:
        kind = type(rt).__name__
        if kind == "VarRuntime" and rt.sinks:
            seq = handle.session.seq
            vis = ((seq.classes[:, :prompt_len] & VISUAL) != 0) if seq is not None else None
            per = torch.stack([s[:, :prompt_len].sum(1).float() for s in rt.sinks.values()])  # (L, B)
            out["var_sinks_per_layer"] = round(float(per.mean()), 2)
            out["var_sinks_min_max"] = [int(per.min()), int(per.max())]
            if vis is not None:
                pv = torch.stack([(s[:, :prompt_len] & vis).sum(1).float() for s in rt.sinks.values()])
                out["var_visual_sinks_per_layer"] = round(float(pv.mean()), 2)
            gen = torch.stack([s[:, prompt_len:].sum(1).float() for s in rt.sinks.values()])
            out["var_generated_sinks_per_layer"] = round(float(gen.mean()), 2)
        elif kind == "DualStreamRuntime" and rt.bits is not None:
            bits = rt.bits.float() if False else rt.bits
            out["dual_local_per_row"] = round(float(((bits & LOCAL) != 0).sum(1).float().mean()), 1)
            out["dual_summary_per_row"] = round(float(((bits & SUMMARY) != 0).sum(1).float().mean()), 1)
        elif kind == "VhrRuntime" and rt.heads:
            per = torch.stack([h.float().sum(1) for h in rt.heads.values()])  # (L, B)
            out["vhr_heads_per_layer"] = round(float(per.mean()), 2)
            out["vhr_layers"] = len(rt.heads)
    return out


class Runner:
    def __init__(self, args, device):
        self.args = args
        self.device = device
        self.cuda = device.type == "cuda"
        self.times: dict = {}  # key -> list of seconds
        self.round_ids: dict = {}  # key -> (phase, round) of each of those runs, to pair runs of the same round
        self.discarded: dict = {}  # key -> seconds of the rounds run but not kept
        # key -> per timed run, the calls that took Triton's own launch path (new direct-launch keys; 0 once warm)
        self.slow_launches: dict = {}
        self.mems: dict = {}
        self.stats: dict = {}
        self.syncs: dict = {}
        self.prior: list = []  # records of an earlier run kept by --merge
        self.notes: list[str] = []
        self.skipped: list[str] = []
        self.step_est: dict = {}  # (model, batch) -> seconds per generate of vanilla
        self.benches: dict = {}
        self.gc = GcClock()  # collections during each timed generate (a full one walks every object of the process)
        self.gc_full: dict = {}  # key -> per timed run, ms spent in full (oldest-generation) collections
        # key -> per timed run, CPU time of this (the launching) thread: the host's own work plus any spinning wait on
        # the GPU, without the time the thread was not running (another process or virtual machine had the core)
        self.cpu_times: dict = {}

    # -- one configuration ---------------------------------------------------------------------------------------
    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _setup(self, bench, cfg):
        method, backend = cfg
        model = bench.model
        if method == "eager":
            model.set_attn_implementation("eager")
        elif method != "vanilla":
            vlmfix.patch(model, *method_specs(method, bench), backend=backend)

    def _teardown(self, bench, cfg):
        method, _ = cfg
        if method == "eager":
            bench.model.set_attn_implementation("sdpa")
        elif method != "vanilla":
            vlmfix.unpatch(bench.model)

    @torch.no_grad()
    def generate(self, bench, inputs, cfg, new_tokens, audit=False):
        model = bench.model
        self._setup(bench, cfg)
        try:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            # a full collection walks every object of the process (~300 ms on the H200's host): start each run with
            # none pending, so one does not land in whichever run crosses the threshold (gc_pressure.py measures
            # whether a configuration itself sets them off; each run's full collections are recorded all the same)
            gc.collect()
            self._sync()
            self.gc.reset()
            cpu = time.thread_time()
            t = time.perf_counter()
            def run():
                return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False)

            out, syncs = self.sync_audit(run) if audit else (run(), None)
            self._sync()
            dt = time.perf_counter() - t
            cpu = time.thread_time() - cpu
            full_gc_ms = round(1e3 * self.gc.seconds.get(2, 0.0), 1)
            mem = ((torch.cuda.max_memory_allocated(self.device) - self.other_bytes(bench.name)) / 2 ** 30
                   if self.cuda else float("nan"))
            stats = method_stats(model, inputs["input_ids"].shape[1]) if cfg[0] not in ("vanilla", "eager") else {}
        finally:
            self._teardown(bench, cfg)
        got = out.shape[1] - inputs["input_ids"].shape[1]
        if got != new_tokens:
            raise RuntimeError(f"{cfg}: generated {got} tokens, expected {new_tokens}")
        return dt, mem, stats, syncs, cpu, full_gc_ms

    def other_bytes(self, name):
        """Bytes held by the other resident benchmark models (their weights stay allocated and untouched)."""
        return sum(b.info["bytes"] for n, b in self.benches.items() if n != name)

    def sync_audit(self, fn):
        """Run ``fn`` with CUDA's sync debug mode on; count host-device synchronisations by calling source line."""
        if not self.cuda or not self.args.sync_audit:
            return fn(), None
        import warnings
        from collections import Counter

        prev = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                result = fn()
            finally:
                torch.cuda.set_sync_debug_mode(prev)
        hits = [w for w in caught if "synchroniz" in str(w.message)]
        sites = Counter(f"{os.path.basename(os.path.dirname(w.filename))}/{os.path.basename(w.filename)}:{w.lineno}"
                        for w in hits)
        return result, {"total": len(hits), "tokens": self.args.warm_tokens, "sites": dict(sites.most_common(8))}

    # -- scheduling ------------------------------------------------------------------------------------------------
    def elapsed(self):
        return time.perf_counter() - T0

    def est(self, model, batch, cfg):
        key = (model, batch, *cfg)
        if self.times.get(key):
            return statistics.median(self.times[key])
        base = self.step_est.get((model, batch)) or next(iter(self.step_est.values()), None)
        if base is None:
            return None
        factor = {"vanilla": 1.0, "eager": 1.15}.get(cfg[0], 1.6 if cfg[1] == "torch" else 1.15)
        return base * factor

    def phase(self, bench, batch, cfgs, label):
        args = self.args
        name = bench.name
        inputs = bench.make_inputs(batch)
        if args.budget_s:
            each = [self.est(name, batch, c) for c in cfgs]
            if all(e is not None for e in each):
                # warm-ups + discarded rounds + one timed round; later rounds stop at the budget
                need = (1.4 + args.discard_rounds) * sum(each)
                left = args.budget_s - self.elapsed()
                if need > left:
                    msg = f"skipped {name} b{batch} {label}: needs ~{need:.0f}s, {left:.0f}s left in the budget"
                    log(msg)
                    self.skipped.append(msg)
                    return
        warm_tokens = min(args.new_tokens, args.warm_tokens)
        ok = []
        for cfg in cfgs:
            try:
                dt, _, stats, syncs, _, _ = self.generate(bench, inputs, cfg, warm_tokens, audit=True)
            except Exception as exc:  # keep measuring the others; the failure is reported
                self.fail(name, batch, cfg, exc)
                continue
            ok.append(cfg)
            if stats:
                self.stats[(name, batch, *cfg)] = stats
            if syncs is not None:
                self.syncs[(name, batch, *cfg)] = syncs
            log(f"warm {name} b{batch} {cfg[0]:<11} {cfg[1]:<6} {dt:6.2f}s {stats if stats else ''}"
                + (f" syncs {syncs['total']} {syncs['sites']}" if syncs else ""))
        cfgs = ok
        repeats = args.reference_repeats if label == REFERENCE_PHASE else args.repeats
        for r in range(-args.discard_rounds, repeats):
            order = cfgs if r % 2 == 0 else cfgs[::-1]
            for cfg in order:
                e = self.est(name, batch, cfg)
                if args.budget_s and e is not None and self.elapsed() + e > args.budget_s:
                    msg = f"stopped {name} b{batch} {label} in round {r}: wall-clock budget reached"
                    log(msg)
                    self.skipped.append(msg)
                    return
                plans = direct_launch_plans()
                try:
                    dt, mem, stats, _, cpu, full_gc_ms = self.generate(bench, inputs, cfg, args.new_tokens)
                except Exception as exc:
                    self.fail(name, batch, cfg, exc)
                    continue
                key = (name, batch, *cfg)
                slow = direct_launch_plans() - plans
                if r < 0:  # a full-length round that is run but not kept (first rounds run slow here)
                    self.discarded.setdefault(key, []).append(dt)
                    log(f"discarded {name} b{batch} {cfg[0]:<11} {cfg[1]:<6} {dt:6.2f}s")
                    continue
                self.times.setdefault(key, []).append(dt)
                self.slow_launches.setdefault(key, []).append(slow)
                self.round_ids.setdefault(key, []).append((label, r))
                self.mems.setdefault(key, []).append(mem)
                self.gc_full.setdefault(key, []).append(full_gc_ms)
                self.cpu_times.setdefault(key, []).append(cpu)
                if stats:
                    self.stats[key] = stats
                if cfg[0] == "vanilla":
                    self.step_est[(name, batch)] = statistics.median(self.times[key])
                log(f"run{r} {name} b{batch} {cfg[0]:<11} {cfg[1]:<6} {dt:6.2f}s "
                    f"{batch * args.new_tokens / dt:8.1f} tok/s  peak {mem:6.2f} GiB  slow launches {slow}  "
                    f"full gc {full_gc_ms} ms  cpu {cpu:.2f}s")
                self.write()

    def profile(self, bench, batch, cfg, new_tokens=16):
        """Where the host and device time of a short generate goes (torch profiler), written as two tables."""
        from torch.profiler import ProfilerActivity, profile

        inputs = bench.make_inputs(batch)
        self.generate(bench, inputs, cfg, new_tokens)  # warm
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=acts) as prof:
            dt, *_ = self.generate(bench, inputs, cfg, new_tokens)
        avg = prof.key_averages()
        stem = os.path.join(self.args.out, f"profile_{bench.name}_b{batch}_{cfg[0]}")
        with open(stem + ".txt", "w") as fh:
            fh.write(f"# {bench.name} batch {batch} {cfg[0]}/{cfg[1]}: {new_tokens}-token generate, {dt:.3f} s under "
                     f"the profiler\n\n## by host time\n")
            fh.write(avg.table(sort_by="self_cpu_time_total", row_limit=40))
            if self.cuda:
                fh.write("\n\n## by device time\n")
                fh.write(avg.table(sort_by="self_device_time_total", row_limit=25))
        # The same generate under cProfile: the Python between the ops, which the torch profiler does not see.
        import cProfile
        import io
        import pstats

        py = cProfile.Profile()
        py.enable()
        dt_py, *_ = self.generate(bench, inputs, cfg, new_tokens)
        py.disable()
        with open(stem + "_python.txt", "w") as fh:
            fh.write(f"# {bench.name} batch {batch} {cfg[0]}/{cfg[1]}: {new_tokens}-token generate, {dt_py:.3f} s "
                     "under cProfile\n")
            for order in ("tottime", "cumulative"):
                buf = io.StringIO()
                pstats.Stats(py, stream=buf).sort_stats(order).print_stats(45)
                fh.write(f"\n## by {order}\n" + buf.getvalue())
        log(f"profiled {bench.name} b{batch} {cfg[0]}: {dt:.2f}s -> {stem}.txt, {stem}_python.txt")

    def fail(self, name, batch, cfg, exc):
        import traceback

        msg = f"FAILED {name} b{batch} {cfg[0]}/{cfg[1]}: {type(exc).__name__}: {str(exc)[:300]}"
        log(msg)
        traceback.print_exc()
        self.notes.append(msg)
        if self.cuda:
            torch.cuda.empty_cache()
        if vlmfix.is_patched(self.benches[name].model):
            vlmfix.unpatch(self.benches[name].model)
        self.write()

    # -- results ---------------------------------------------------------------------------------------------------
    def records(self):
        recs = []
        for key, ts in self.times.items():
            model, batch, method, backend = key
            van = self.times.get((model, batch, "vanilla", "sdpa"))
            tps = batch * self.args.new_tokens / statistics.median(ts)
            mem = statistics.median(self.mems[key]) if self.cuda else None
            v_tps = batch * self.args.new_tokens / statistics.median(van) if van else None
            v_mem = statistics.median(self.mems[(model, batch, "vanilla", "sdpa")]) if van and self.cuda else None
            bench = self.benches[model]
            rec = {"model": model, "batch": batch, "method": method, "backend": backend,
                   "tokens_per_s": round(tps, 2), "vanilla_tokens_per_s": None if v_tps is None else round(v_tps, 2),
                   "ratio": round(tps / v_tps, 4) if van else None,
                   "peak_mem_gb": None if mem is None else round(mem, 3),
                   "vanilla_peak_mem_gb": None if v_mem is None else round(v_mem, 3),
                   "mem_ratio": round(mem / v_mem, 4) if mem is not None and v_mem else None,
                   "n_repeats": len(ts), "times_s": [round(t, 3) for t in ts],
                   "discarded_s": [round(t, 3) for t in self.discarded.get(key, [])],
                   "slow_launches": self.slow_launches.get(key, []),
                   "gc_full_ms": self.gc_full.get(key, []),
                   "cpu_times_s": [round(t, 3) for t in self.cpu_times.get(key, [])],
                   "prompt_tokens": bench.prompt_len, "image_tokens": bench.n_image_tokens,
                   "new_tokens": self.args.new_tokens}
            if van:
                # two readings less sensitive to the host's drift than the ratio of medians: the median over rounds
                # of each round's own ratio (its vanilla and method runs are adjacent in time), and fastest / fastest
                van_by_round = dict(zip(self.round_ids[(model, batch, "vanilla", "sdpa")], van))
                pairs = [van_by_round[rid] / t for rid, t in zip(self.round_ids[key], ts) if rid in van_by_round]
                rec["ratio_paired"] = round(statistics.median(pairs), 4) if pairs else None
                rec["ratio_fastest"] = round(min(van) / min(ts), 4)
                van_cpu, cpu = self.cpu_times.get((model, batch, "vanilla", "sdpa")), self.cpu_times.get(key)
                if van_cpu and cpu:  # differs from `ratio` only where the thread was off its core (another load had it)
                    rec["cpu_ratio"] = round(statistics.median(van_cpu) / statistics.median(cpu), 4)
            if backend == "triton" and rec["ratio"] is not None:
                bar = BARS.get(method, BARS["default"])
                rec["bar"] = bar
                rec["meets_speed_bar"] = rec["ratio"] >= bar
                if rec["mem_ratio"] is not None:
                    rec["meets_mem_bar"] = rec["mem_ratio"] <= MEM_BAR
            if method == "var" or method == "all":
                rec["var_tau"] = round(bench.var_tau, 4)
                rec["var_sink_dims"] = list(bench.sink_dims)
            rec.update(self.stats.get(key, {}))
            if key in self.syncs:
                rec["warmup_syncs"] = self.syncs[key]
            recs.append(rec)
        have = {(r["model"], r["batch"], r["method"], r["backend"]) for r in recs}
        recs += [r for r in self.prior if (r["model"], r["batch"], r["method"], r["backend"]) not in have]
        order = {m: i for i, m in enumerate(("vanilla", "eager") + METHODS)}
        recs.sort(key=lambda r: (r["model"], r["batch"], r["backend"] != "sdpa", r["backend"],
                                 order.get(r["method"], 99)))
        return recs

    def env(self):
        import transformers

        try:
            import triton
            tv = triton.__version__
        except Exception:  # pragma: no cover
            tv = None
        gpu = torch.cuda.get_device_name(self.device) if self.cuda else platform.processor() or "cpu"
        return {"torch": torch.__version__, "triton": tv, "transformers": transformers.__version__, "device": gpu,
                "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": "python " + " ".join(sys.argv), "cpu_count": os.cpu_count(),
                "cpus_used": sorted(os.sched_getaffinity(0))}

    def write(self):
        out = self.args.out
        os.makedirs(out, exist_ok=True)
        recs = self.records()
        stem = self.args.stem
        with open(os.path.join(out, f"{stem}.json"), "w") as f:
            json.dump(recs, f, indent=1, allow_nan=False)
        with open(os.path.join(out, f"{stem}.md"), "w") as f:
            f.write(self.markdown(recs))

    def markdown(self, recs):
        env = self.env()
        lines = [f"# End-to-end generate: {env['device']}", "",
                 f"- command: `{env['command']}`",
                 f"- torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}; "
                 f"{env['date_utc']}",
                 f"- random bf16 weights; prompt = image tokens + {self.args.text_tokens} text tokens; "
                 f"{self.args.new_tokens} new tokens forced, greedy; medians of the timed runs (rounds alternate "
                 "order); tokens/s = batch x new tokens / generate wall time (prefill included); `ratio` = ratio "
                 "of the medians (the bars), `paired` = median over rounds of each round's ratio, `fastest` = "
                 "fastest vanilla / fastest run, `cpu` = ratio of the medians of the launching thread's CPU time (host work "
                 "and spinning waits, not the time the thread was off its core); peak = max_memory_allocated (weights "
                 "included)",
                 f"- bars (triton backend): tokens/s ratio >= {BARS['default']} ({BARS['vhr_exact']} for vhr_exact), "
                 f"peak memory <= {MEM_BAR:.2f} x vanilla; `all` = VAR + VHR fused + dual-stream", ""]
        for name, b in self.benches.items():
            lines.append(f"- {name}: {b.info.get('text')}; {b.info.get('vision')}; {b.n_image_tokens} image tokens, "
                         f"prompt {b.prompt_len} tokens; VAR sink dims {list(b.sink_dims)}, tau {b.var_tau:.3f}")
        lines += ["", "| model | batch | method | backend | tok/s | vanilla tok/s | ratio | paired | fastest | cpu | peak GiB | "
                  "vanilla GiB | mem ratio | bars | n | selected |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in recs:
            bars = ""
            if "meets_speed_bar" in r:
                bars = ("speed ok" if r["meets_speed_bar"] else "SPEED MISS") + (
                    ", mem ok" if r.get("meets_mem_bar") else (", MEM MISS" if "meets_mem_bar" in r else ""))
            sel = []
            if "var_sinks_per_layer" in r:
                sel.append(f"sinks/layer {r['var_sinks_per_layer']} ({r.get('var_visual_sinks_per_layer')} visual)")
            if "dual_local_per_row" in r:
                sel.append(f"local {r['dual_local_per_row']}, summary {r['dual_summary_per_row']}")
            if "vhr_heads_per_layer" in r:
                sel.append(f"heads/layer {r['vhr_heads_per_layer']}")
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
            mr = "" if r.get("mem_ratio") is None else f"{r['mem_ratio']:.3f}"
            def num(x, fmt):
                return "" if x is None else format(x, fmt)

            lines.append(f"| {r['model']} | {r['batch']} | {r['method']} | {r['backend']} | {r['tokens_per_s']:.1f} | "
                         f"{num(r['vanilla_tokens_per_s'], '.1f')} | {ratio} | {num(r.get('ratio_paired'), '.3f')} | "
                         f"{num(r.get('ratio_fastest'), '.3f')} | {num(r.get('cpu_ratio'), '.3f')} | "
                         f"{num(r['peak_mem_gb'], '.2f')} | "
                         f"{num(r['vanilla_peak_mem_gb'], '.2f')} | {mr} | {bars} | {r['n_repeats']} | "
                         f"{'; '.join(sel)} |")
        synced = [r for r in recs if "warmup_syncs" in r]
        if synced:
            lines += ["", f"Host-device synchronisations during the {self.args.warm_tokens}-token warm-up generate "
                      "(CUDA sync debug mode; prefill + decode steps), by calling line:", ""]
            for r in synced:
                sy = r["warmup_syncs"]
                sites = ", ".join(f"`{k}` {v}" for k, v in sy["sites"].items())
                lines.append(f"- {r['model']} b{r['batch']} {r['method']}/{r['backend']}: {sy['total']} ({sites})")
        if self.skipped or self.notes:
            lines += ["", "Not measured / notes:", ""] + [f"- {s}" for s in self.notes + self.skipped]
        return "\n".join(lines) + "\n"


def parse_cpus(spec: str) -> set[int]:
    """``"0-3,6"`` -> {0, 1, 2, 3, 6}."""
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llava,qwen2_vl")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference-repeats", type=int, default=2,
                    help="timed rounds of the eager / torch-reference phase (no bars there; default 2)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--stem", default=None,
                    help="output file stem (default generate_h200, generate_quick with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny configs (smoke test; CPU is fine)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--backends", default="triton,torch")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128 (16 with --quick)")
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--warm-tokens", type=int, default=20, help="tokens of each warm-up generate")
    ap.add_argument("--sinks", type=float, default=8.0, help="target sink tokens per layer for the VAR tau")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget: phases that would not fit skip")
    ap.add_argument("--no-sync-audit", dest="sync_audit", action="store_false",
                    help="do not count host-device syncs during the warm-ups")
    ap.add_argument("--merge", action="store_true",
                    help="keep the records of an existing output file that this run does not re-measure")
    ap.add_argument("--no-reference", action="store_true", help="skip the eager / torch-reference phase")
    ap.add_argument("--discard-rounds", type=int, default=1,
                    help="full-length rounds run after the warm-ups and not kept (default 1)")
    ap.add_argument("--cpus", default=None, metavar="LIST",
                    help="pin the process to these CPUs (e.g. 0-3 or 2,3): fewer migrations of the host-bound "
                         "Python thread between cores, a possible source of the run-to-run spread")
    ap.add_argument("--profile", default=None, metavar="METHOD",
                    help="instead of timing: torch-profile a 16-token generate of vanilla and of METHOD (first of "
                         "--backends) for each model and batch; writes the top host and device ops of each")
    args = ap.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, parse_cpus(args.cpus))
    args.new_tokens = args.new_tokens or (16 if args.quick else 128)
    args.stem = args.stem or ("generate_quick" if args.quick else "generate_h200")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16
    torch.manual_seed(0)

    backends = [b for b in args.backends.split(",") if b]
    os.makedirs(args.out, exist_ok=True)
    runner = Runner(args, device)
    if "triton" in backends and not triton_available(device):
        backends.remove("triton")
        runner.notes.append(f"backend triton not available on {device.type}: only the torch reference was run")
    path = os.path.join(args.out, f"{args.stem}.json")
    if args.merge and os.path.exists(path):
        with open(path) as f:
            runner.prior = json.load(f)
        runner.notes.append(f"merged with {len(runner.prior)} records of an earlier run of this file")
    methods = [m for m in args.methods.split(",") if m]
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]

    log(f"device {device}, models {models}, batches {batches}, backends {backends}, methods {methods}")
    for name in models:
        bench = BUILDERS[name](device, dtype, args.quick, args.text_tokens)
        bench.var_tau = calibrate_tau(bench, args.sinks)
        runner.benches[name] = bench
        bench.info["bytes"] = sum(t.numel() * t.element_size() for t in
                                  list(bench.model.parameters()) + list(bench.model.buffers()))
        log(f"built {name}: {sum(p.numel() for p in bench.model.parameters()) / 1e9:.2f} B params, "
            f"prompt {bench.prompt_len} tokens ({bench.n_image_tokens} image)")
        if runner.cuda:
            log(f"  allocated {torch.cuda.memory_allocated(device) / 2 ** 30:.1f} GiB")

    fast = [b for b in backends if b == "triton"]
    slow = [b for b in backends if b != "triton"]
    phases = []
    for bk in fast:  # phase 1: the bars (batch-major, so every model gets its batch-1 numbers first)
        for b in batches:
            for name in models:
                phases.append((name, b, [("vanilla", "sdpa")] + [(m, bk) for m in methods], f"{bk} methods"))
    for b in batches:  # phase 2: references
        for name in models:
            cfgs = [("vanilla", "sdpa")]
            if not args.no_reference or not fast:
                cfgs.append(("eager", "eager"))
                cfgs += [(m, bk) for bk in slow for m in methods]
            if len(cfgs) > 1:
                phases.append((name, b, cfgs, REFERENCE_PHASE))
    if args.profile:
        for b in batches:
            for name in models:
                for cfg in (("vanilla", "sdpa"), (args.profile, backends[0])):
                    runner.profile(runner.benches[name], b, cfg)
        log("done")
        return
    with runner.gc:
        for name, b, cfgs, label in phases:
            log(f"== {name} batch {b}: {label}")
            runner.phase(runner.benches[name], b, cfgs, label)
    runner.write()
    recs = runner.records()
    print(f"\n{'model':<9} {'b':>2} {'method':<12} {'backend':<7} {'tok/s':>8} {'ratio':>6} {'peakGiB':>8} "
          f"{'memx':>6} n")
    for r in recs:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        mr = "" if r.get("mem_ratio") is None else f"{r['mem_ratio']:.3f}"
        peak = "" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.2f}"
        print(f"{r['model']:<9} {r['batch']:>2} {r['method']:<12} {r['backend']:<7} {r['tokens_per_s']:8.1f} "
              f"{ratio:>6} {peak:>8} {mr:>6} {r['n_repeats']}")
    for s in runner.skipped:
        print(s)
    log("done")


if __name__ == "__main__":
    main()
