"""Host (Python) cost that the patch adds to one decode step, per decoder layer, in the host-bound regime.

    python benchmarks/profile_overhead.py [--layers 32] [--hidden 64] [--steps 48] [--repeats 5] [--profile]
                                          [--json PATH]

A tiny-but-deep LLaVA (CLIP 2 x 32 + a Llama of ``--layers`` x ``--hidden``, fp32, CPU) makes the arithmetic
negligible, so what is timed is the Python and dispatcher work per step, the part that dominates a batch-1 ``generate``
of a 7B model on a fast GPU. Decode-step time = (generate of ``--steps`` new tokens - generate of 1) / (steps - 1),
so prefill and the fixed costs of ``generate`` cancel (the 1-token generate's own time, the fastest of the rounds, is
reported beside it: prefill, one step and those fixed costs); timed as CPU time of the (single) torch thread, so other load
on the machine does not count; ``--repeats`` rounds of alternating order, reported as the minimum and the median.
Beside the times, ATen ops per decode step are counted at the dispatcher (a load-independent number: on a GPU each
non-view op is one kernel launch).

Configurations (all backend="torch", since the Triton wrapper cannot run here):

* ``vanilla``            SDPA, unpatched.
* ``patched``            ``vlmfix.patch(model)`` with no method (instrumented only; every layer falls back to SDPA).
* ``var`` / ``vhr_fused`` / ``dual_stream`` / ``all``  the methods through the torch reference kernel.
* ``*+stub``             the same with the kernel call replaced by plain SDPA that ignores the parameters: what is left
                         over vanilla is our own per-layer Python (session, methods, hooks), i.e. what stays on the
                         host when the GPU kernel is as cheap as SDPA's.
* ``*+tstub``            decode steps also run the Triton wrapper's host path (everything but the launch itself) before
                         the SDPA stub: our Python plus the Triton backend's, on a CPU.
* ``*+norecipe``         (Triton backend) every decode call derives its launch in full instead of replaying the recipe
                         an earlier call of its signature left (``kernels/_recipes.py``).

``micro`` times the pieces one by one (per call, CPU time): VAR's decode-step sink test + write into the layer's
SINK-bit buffer + contribution, with ``SinkBitWriter`` (the code) and with ``detect_sinks`` (the prefill's test, which
the decode step used before), the kernel dispatch, and the per-call objects.

``--profile`` adds a cProfile of the ``all+stub`` decode loop and prints the functions inside ``vlmfix`` with their
own and cumulative time per layer call.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import vlmfix  # noqa: E402
from vlmfix.kernels import SINK  # noqa: E402
from vlmfix.kernels import reference  # noqa: E402
from vlmfix.patches import session as session_mod  # noqa: E402
from launch_swap import launches_replaced  # noqa: E402

VOCAB, IMAGE_ID = 512, 511


def build(layers: int, hidden: int, heads: int, image: int = 56):
    import transformers as tf

    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 image_size=image, patch_size=14, projection_dim=32)
    text = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID,
                         image_seq_length=(image // 14) ** 2)
    torch.manual_seed(0)
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id, gen.do_sample = 0, 2, 1, False
    n_img = (image // 14) ** 2
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.tensor([1]), torch.randint(3, 500, (3,), generator=g), torch.full((n_img,), IMAGE_ID),
                     torch.randint(3, 500, (60,), generator=g)])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(1, 3, image, image, generator=g)}
    return model, inputs


def build_qwen(layers: int, hidden: int, heads: int, grid: int = 8):
    """The same tiny-but-deep shape as ``build`` in the Qwen2-VL family (GQA 2:1, M-RoPE, a 2-layer ViT): one
    ``grid`` x ``grid``-patch image merged 2 x 2 into ``grid**2 / 4`` tokens."""
    import transformers as tf

    text = tf.Qwen2VLTextConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                                num_hidden_layers=layers, num_attention_heads=heads,
                                num_key_value_heads=max(1, heads // 2), max_position_embeddings=2048,
                                rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0))
    vision = tf.Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=hidden, num_heads=4, patch_size=14,
                                    spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)
    cfg = tf.Qwen2VLConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=IMAGE_ID,
                           video_token_id=IMAGE_ID - 1, vision_start_token_id=IMAGE_ID - 2,
                           vision_end_token_id=IMAGE_ID - 3)
    torch.manual_seed(0)
    model = tf.Qwen2VLForConditionalGeneration(cfg).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id, gen.do_sample = 0, 2, 1, False
    n_img = grid * grid // 4
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.tensor([1]), torch.randint(3, 500, (3,), generator=g), torch.tensor([IMAGE_ID - 2]),
                     torch.full((n_img,), IMAGE_ID), torch.tensor([IMAGE_ID - 3]),
                     torch.randint(3, 500, (58,), generator=g)])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(grid * grid, 3 * 2 * 14 * 14, generator=g),
              "image_grid_thw": torch.tensor([[1, grid, grid]]), "mm_token_type_ids": (ids == IMAGE_ID).long()}
    return model, inputs

# ----------------------------------------------------------------------------------------------------------------------
# kernel stub: SDPA that ignores the re-weighting parameters (isolates our Python from the kernel's cost)
# ----------------------------------------------------------------------------------------------------------------------
def stub_attention(q, k, v, *, scale, mask=None, params=None, want=(), backend="auto"):
    if want:
        return reference.attention(q, k, v, scale=scale, mask=mask, params=params, want=want)
    causal = mask is None and q.shape[2] > 1
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                         enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2), {}


def triton_host_stub(q, k, v, *, scale, mask=None, params=None, want=(), backend="auto"):
    """The Triton wrapper's whole host path (argument preparation, the direct-launch key) with the launches
    themselves replaced by nothing, then plain SDPA for the output: what the Triton backend costs the host per
    layer call, measurable without a GPU (the C launcher call itself, a few us, is not included). Each call's time is
    booked as a replay (its signature has a recipe) or a full-path call (the step's first of its signature)."""
    from vlmfix.kernels import triton_attention as ta
    from vlmfix.kernels._recipes import decode_signature

    if q.shape[2] == 1 and not want:
        kind = "replay" if decode_signature(q, k, v, scale, mask, params)[0] in ta._decode_recipes else "full"
        t = CLOCK()
        ta.attention(q, k, v, scale=scale, mask=mask, params=params)
        TSTUB_WRAPPER[kind] += CLOCK() - t
        TSTUB_WRAPPER[kind + "_calls"] += 1
    return stub_attention(q, k, v, scale=scale, mask=mask, params=params, want=want)


# host time inside the Triton wrapper during ``+tstub`` runs, and calls, split into replays and full-path calls
TSTUB_WRAPPER = {"replay": 0.0, "replay_calls": 0, "full": 0.0, "full_calls": 0}


@contextlib.contextmanager
def kernel_stub(fn=None):
    saved = session_mod.kernel_attention
    session_mod.kernel_attention = fn or stub_attention
    try:
        yield
    finally:
        session_mod.kernel_attention = saved


@contextlib.contextmanager
def triton_host_only():
    """Triton's launches become no-ops that still compute the direct-launch key (see ``triton_host_stub``)."""
    class Keyed:
        """A launcher that computes the direct-launch key and launches nothing; decode recipes get a runner that does
        nothing either (what is skipped either way is the C launcher call itself)."""

        enabled, compile_only = True, False

        def __init__(self, direct):
            self.direct = direct

        def __call__(self, grid, args, constexprs, options):
            return self.direct.key(args, constexprs, options)

        def runner(self, compiled, grid, constexprs, device):
            return (lambda *flat: None), tuple(constexprs.values()), None

    def keyed(direct):
        return Keyed(direct)

    with launches_replaced(keyed), kernel_stub(triton_host_stub):
        yield


# ----------------------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------------------
def methods_for(name, sink_dims, tau):
    var = vlmfix.VAR(sink_dims=sink_dims, tau=tau)
    return {"patched": [], "var": [var], "var_nodetect": [vlmfix.VAR(sink_dims=sink_dims, tau=tau,
                                                                     detect_on_decode=False)],
            "vhr_fused": [vlmfix.VHR(mode="fused")],
            "vhr_exact": [vlmfix.VHR(mode="exact")], "dual_stream": [vlmfix.DualStream()],
            "all": [var, vlmfix.VHR(mode="fused"), vlmfix.DualStream()],
            "all_exact": [var, vlmfix.VHR(mode="exact"), vlmfix.DualStream()]}[name]


BACKEND = "torch"  # set from --backend


@contextlib.contextmanager
def configured(model, cfg, sink_dims, tau):
    base, *mods = cfg.split("+")
    ctx = contextlib.ExitStack()
    with ctx:
        if "stub" in mods:
            ctx.enter_context(kernel_stub())
        if "tstub" in mods:  # decode steps: the Triton wrapper's host path without its launches (CPU-measurable)
            ctx.enter_context(triton_host_only())
        if "norecipe" in mods:  # every decode call derives its launch in full (no replay of a recorded one)
            from vlmfix.kernels import triton_attention as ta

            ctx.enter_context(ta.launch_choices(DECODE_RECIPES=False))
        if base != "vanilla":
            vlmfix.patch(model, *methods_for(base, sink_dims, tau), backend=BACKEND)
        try:
            yield
        finally:
            if base != "vanilla":
                vlmfix.unpatch(model)


CLOCK = time.thread_time  # CPU time of this thread (torch runs single-threaded here): robust to other load
SYNC = lambda: None  # noqa: E731  (CUDA: wall clock, synchronised before and after)


@torch.no_grad()
def gen(model, inputs, n):
    SYNC()
    t = CLOCK()
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    SYNC()
    return CLOCK() - t, out


def step_time(model, inputs, cfg, steps, sink_dims, tau):
    """(seconds per decode step, the output, seconds of the 1-token generate: prefill and generate's fixed costs)."""
    with configured(model, cfg, sink_dims, tau):
        t1, _ = gen(model, inputs, 1)
        tn, out = gen(model, inputs, steps)
    return (tn - t1) / (steps - 1), out, t1


# ops that only make a new view (no kernel launch on a GPU, but still a dispatcher round trip on the host)
VIEW_OPS = {"view", "_unsafe_view", "slice", "select", "transpose", "unsqueeze", "squeeze", "expand", "t", "permute",
            "as_strided", "alias", "detach", "lift_fresh", "split", "unbind", "reshape", "_reshape_alias", "flatten",
            "view_as", "chunk", "narrow", "split_with_sizes", "expand_as"}


def count_ops(model, inputs, cfg, steps, sink_dims, tau):
    """ATen ops per decode step (dispatch level) under ``cfg``: {op name: count}; views counted separately."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.c = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.c[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with configured(model, cfg, sink_dims, tau):
        with Count() as one:
            gen(model, inputs, 1)
        with Count() as many:
            gen(model, inputs, steps)
    per = Counter()
    for k in set(one.c) | set(many.c):
        d = (many.c[k] - one.c[k]) / (steps - 1)
        if d:
            per[k] = d
    return per


def calibrate_tau(model, inputs, dims, target=6.0):
    from vlmfix.heads.sinks import sink_scores

    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True, use_cache=False).hidden_states
    n = model.config.text_config.num_hidden_layers
    phi = torch.stack([sink_scores(hs[i], dims)[0] for i in range(2, n - 1)])
    return float(torch.quantile(phi.flatten(), 1 - target / phi.shape[1]))


def _short(path):
    if os.path.abspath(path) == os.path.abspath(__file__):
        return "profile_overhead.py"  # the kernel stub
    return os.path.relpath(path, os.path.dirname(vlmfix.__file__))


def profile_loop(model, inputs, cfg, steps, sink_dims, tau, top=18):
    """cProfile of a generate under ``cfg``; rows = functions in vlmfix (own / cumulative time per layer call)."""
    with configured(model, cfg, sink_dims, tau):
        gen(model, inputs, 2)
        prof = cProfile.Profile()
        prof.enable()
        gen(model, inputs, steps)
        prof.disable()
    st = pstats.Stats(prof)
    rows = []
    n_attend = None
    for (path, line, fn), (cc, nc, tt, ct, _callers) in st.stats.items():
        if fn == "text_attention" and "vlmfix" in path:
            n_attend = nc
        if "vlmfix" in path or "profile_overhead" in path:
            rows.append((tt, ct, nc, f"{_short(path)}:{line}({fn})"))
    total_tt = sum(v[2] for v in st.stats.values())
    rows.sort(reverse=True)
    n_attend = n_attend or 1
    print(f"\ncProfile of {cfg}, {steps} new tokens: {n_attend} vlmfix attention calls; total profiled "
          f"{total_tt * 1e3:.0f} ms (profiling inflates absolute times ~2x; compare rows with each other)")
    print(f"{'own us/call':>12} {'cum us/call':>12} {'calls/attn':>10}  function")
    for tt, ct, nc, name in rows[:top]:
        print(f"{tt / n_attend * 1e6:12.2f} {ct / n_attend * 1e6:12.2f} {nc / n_attend:10.2f}  {name}")
    torch_rows = sorted(((v[2], v[1], k) for k, v in st.stats.items() if k[0] == "~"), reverse=True)[:10]
    print("top builtins / torch ops (own time per vlmfix attention call, whole step):")
    for tt, nc, k in torch_rows:
        print(f"{tt / n_attend * 1e6:12.2f} {'':12} {nc / n_attend:10.2f}  {k[2]}")
    return [{"function": name, "own_us_per_attn": round(tt / n_attend * 1e6, 2),
             "cum_us_per_attn": round(ct / n_attend * 1e6, 2), "calls_per_attn": round(nc / n_attend, 2)}
            for tt, ct, nc, name in rows[:top]]


def best_us_per_call(fn, n):
    """Host cost of one call of ``fn`` in us: the best of 5 rounds of ``n`` calls after one warm-up call, timed with
    ``CLOCK`` between ``SYNC``s (CPU time on a CPU; wall clock around GPU synchronisations on a GPU)."""
    fn()
    best = float("inf")
    for _ in range(5):
        SYNC()
        t = CLOCK()
        for _ in range(n):
            fn()
        SYNC()
        best = min(best, (CLOCK() - t) / n)
    return round(best * 1e6, 2)


def micro(hidden_size=4096, kv_len=704, n=3000):
    """Per-call host cost (us, CPU time, min of 5 x n calls) of the per-layer pieces, at LLaVA-7B's width."""
    from vlmfix.heads import SinkBitWriter, detect_sinks
    from vlmfix.kernels import resolve_backend
    from vlmfix.patches.session import LayerCall

    h = torch.randn(1, 1, hidden_size, dtype=torch.bfloat16)
    dims = (1415, 2533)
    classes = torch.zeros(1, kv_len, dtype=torch.int32)
    buf = torch.zeros(1, 2 * kv_len, dtype=torch.int32)
    dims_t = torch.tensor(dims)
    writer = SinkBitWriter(dims_t, 20.0, hidden_size, SINK)
    q = torch.randn(1, 32, 1, 128)

    def var_now():  # VarRuntime's decode step: hook (test + SINK bit into the buffer) + contribute's ``|``
        writer(h, out=buf[:, kv_len - 1:kv_len])
        return classes | buf[:, :kv_len]

    def var_detect_sinks():  # the same with the prefill's test, as the decode step was before SinkBitWriter
        hit = detect_sinks(h, dims_t, 20.0)
        buf[:, kv_len - 1:kv_len] = hit.to(torch.int32) * SINK
        return classes | buf[:, :kv_len]

    def dispatch():
        return resolve_backend("torch", q.device)

    def objects():
        return LayerCall(3, q, q, q, None, 0.1, classes, reference.ReweightParams(), None)

    from vlmfix.kernels import triton_attention as ta

    k = torch.randn(1, 32, kv_len, 128, dtype=torch.bfloat16)
    qb = q.to(torch.bfloat16)
    var_p = torch.full((1, 32), 0.6)
    var_params = reference.ReweightParams(key_class=classes, var_p=var_p)
    step_params = reference.ReweightParams(key_class=classes, var_p=var_p, sink_bits=reference.SinkBits(
        buf, 0, h[:, -1], dims_t, writer.scale, writer.eps_norm_value))

    def triton_call(params):  # the Triton wrapper's decode call, launch replaced by computing the direct-launch key
        return lambda: ta.attention(qb, k, k, scale=0.088, params=params)

    out = {}
    with triton_host_only():
        for name, fn in (("var_decode_layer", var_now), ("var_decode_layer_with_detect_sinks", var_detect_sinks),
                         ("resolve_backend", dispatch), ("layercall_and_params", objects),
                         ("triton_wrapper_none", triton_call(None)), ("triton_wrapper_var", triton_call(var_params)),
                         ("triton_wrapper_var_step", triton_call(step_params))):
            out[name] = best_us_per_call(fn, n)
    print("\nper-call host cost, CPU (us): " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


def micro_gpu(device, hidden_size=4096, heads=32, kv_len=704, batch=1, n=2000):
    """Per-call host cost (us, wall clock over n calls, GPU synchronised at the ends; min of 5) of one decode layer's
    attention pieces on a GPU, where each call's GPU work is a few us and the host sets the pace; plus a cProfile of
    the Triton wrapper's VAR call, split by function."""
    from vlmfix.heads import SinkBitWriter
    from vlmfix.kernels import VISUAL, triton_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, heads, 1, 128, device=device, dtype=torch.bfloat16, generator=g)
    k = torch.randn(batch, heads, kv_len, 128, device=device, dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    h = torch.randn(batch, 1, hidden_size, device=device, dtype=torch.bfloat16, generator=g)
    classes = torch.zeros(batch, kv_len, dtype=torch.int32, device=device)
    classes[:, 4:580] = VISUAL
    buf = torch.zeros(batch, 2 * kv_len, dtype=torch.int32, device=device)
    buf[:, 10:14] = SINK
    writer = SinkBitWriter(torch.tensor((1415, 2533), device=device), 20.0, hidden_size, SINK)
    var_p = torch.full((batch, heads), 0.6, device=device)
    module = torch.nn.Module()
    module.is_causal, module.training = True, False
    cls_var = classes | buf[:, :kv_len]
    params_var = reference.ReweightParams(key_class=cls_var, var_p=var_p, var_rho=0.5, var_min_mass=0.2)
    scale = 128 ** -0.5

    pieces = {
        "sdpa_attention_forward": lambda: sdpa_attention_forward(module, q, k, v, None, scaling=scale),
        "triton_no_params": lambda: triton_attention.attention(q, k, v, scale=scale),
        "triton_var": lambda: triton_attention.attention(q, k, v, scale=scale, params=params_var),
        "sink_test_write": lambda: writer(h, out=buf[:, kv_len - 1:kv_len]),
        "classes_or_bits": lambda: classes | buf[:, :kv_len],
    }
    # the compiled decode kernel's launcher alone, given tensors (Triton's C launcher then calls each one's data_ptr
    # and has the driver check the address) or the addresses themselves (what DirectLaunch passes)
    seen = []

    def recording(direct):
        def launch(*call):
            seen.append((direct, call))
            return direct(*call)
        return launch

    with launches_replaced(recording):
        pieces["triton_var"]()
        pieces["triton_var"]()
    direct, (grid, args, constexprs, options) = seen[-1]
    key, ptrs = direct.key(args, constexprs, options)
    compiled, consts, stream = direct._plans[key]
    rest = args[len(ptrs):]
    pieces["launcher_tensor_args"] = lambda: compiled[grid](*args, *consts)
    pieces["launcher_address_args"] = lambda: compiled[grid](*ptrs, *rest, *consts)
    pieces["launcher_address_args_stream_given"] = lambda: compiled[grid](*ptrs, *rest, *consts, stream=stream())
    out = {}
    for name, fn in pieces.items():
        out[name] = best_us_per_call(fn, n)
    print(f"\nper-call host cost on {torch.cuda.get_device_name(device)}, batch {batch}, {kv_len} keys (us): "
          + ", ".join(f"{k} {v}" for k, v in out.items()))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        pieces["triton_var"]()
    prof.disable()
    torch.cuda.synchronize(device)
    st = pstats.Stats(prof)
    rows = sorted(((tt, ct, nc, f"{os.path.basename(path)}:{line}({fn})")
                   for (path, line, fn), (cc, nc, tt, ct, _c) in st.stats.items()), reverse=True)[:14]
    print("cProfile of the Triton VAR decode call (own / cumulative us per call, profiler-inflated):")
    for tt, ct, nc, name in rows:
        print(f"{tt / n * 1e6:10.2f} {ct / n * 1e6:10.2f} {nc / n:6.2f}  {name}")
    out["profile_triton_var"] = [{"function": name, "own_us": round(tt / n * 1e6, 2), "cum_us": round(ct / n * 1e6, 2)}
                                 for tt, ct, nc, name in rows]
    return out


def build_7b(device, batch, family="llava"):
    """A 7B model of ``generate.py`` (random bf16 weights on the device) with its calibrated VAR tau."""
    sys.path.insert(0, os.path.dirname(__file__))
    import generate

    bench = generate.BUILDERS[family](device, torch.bfloat16, False, 64)
    tau = generate.calibrate_tau(bench, 8.0)
    return bench.model, bench.make_inputs(batch), bench.sink_dims, tau


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default="vanilla,patched,var,vhr_fused,dual_stream,all,"
                                         "var+stub,vhr_fused+stub,dual_stream+stub,all+stub")
    ap.add_argument("--profile", default=None, nargs="?", const="all+stub", metavar="CONFIG",
                    help="cProfile the decode loop of CONFIG (default all+stub)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--model", default="tiny", choices=("tiny", "tiny-qwen2_vl", "llava7b", "qwen2_vl7b"),
                    help="tiny: LLaVA; tiny-qwen2_vl: the same depth and width in the Qwen2-VL family; "
                         "llava7b / qwen2_vl7b: generate.py's 7B shapes with random bf16 weights (need a GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "triton"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--no-ops", dest="ops", action="store_false", help="skip the dispatcher op counts")
    args = ap.parse_args(argv)
    global BACKEND, CLOCK, SYNC
    BACKEND = args.backend
    device = torch.device(args.device)
    if device.type == "cuda":  # wall clock around synchronised generates: the host's time is what is measured
        CLOCK = time.perf_counter
        SYNC = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        torch.set_num_threads(args.threads)
    if args.model in ("llava7b", "qwen2_vl7b"):
        model, inputs, dims, tau = build_7b(device, args.batch, args.model[:-2])
        n, width = model.config.text_config.num_hidden_layers, model.config.text_config.hidden_size
    else:
        model, inputs = (build_qwen if args.model == "tiny-qwen2_vl" else build)(args.layers, args.hidden, args.heads)
        dims = (7, 41)
        tau = calibrate_tau(model, inputs, dims)
        n, width = args.layers, args.hidden
    cfgs = args.configs.split(",")
    print(f"model: {args.model}, language model {n} x {width}, batch {inputs['input_ids'].shape[0]}, prompt "
          f"{inputs['input_ids'].shape[1]} tokens; VAR dims {dims} tau {tau:.3f}; backend {BACKEND}, device {device}; "
          f"torch {torch.__version__}")

    for cfg in cfgs:  # warm-up
        step_time(model, inputs, cfg, 4, dims, tau)
    times = {c: [] for c in cfgs}
    firsts = {c: [] for c in cfgs}  # the 1-token generates: prefill (+ one step and generate's fixed costs)
    wrapper = {c: dict.fromkeys(TSTUB_WRAPPER, 0) for c in cfgs}  # +tstub: the wrapper's time and calls by kind
    for r in range(args.repeats):
        for cfg in (cfgs if r % 2 == 0 else cfgs[::-1]):
            before = dict(TSTUB_WRAPPER)
            per_step, _, first = step_time(model, inputs, cfg, args.steps, dims, tau)
            times[cfg].append(per_step)
            firsts[cfg].append(first)
            for name in TSTUB_WRAPPER:
                wrapper[cfg][name] += TSTUB_WRAPPER[name] - before[name]
    # CPU time of this thread; on a shared machine the minimum over rounds is the least disturbed estimate of a fixed
    # host cost, the median is given beside it.
    van, van_med = min(times["vanilla"]), statistics.median(times["vanilla"])
    rows = []
    print(f"\n{'config':<18} {'ms/step':>8} {'+us/step':>9} {'+us/layer':>10} {'median ms':>10} {'+us/layer':>10} "
          f"{'1-token ms':>10}")
    for cfg in cfgs:
        best, med = min(times[cfg]), statistics.median(times[cfg])
        rows.append({"config": cfg, "ms_per_step": round(best * 1e3, 3),
                     "extra_us_per_step": round((best - van) * 1e6, 1),
                     "extra_us_per_layer": round((best - van) * 1e6 / n, 1), "median_ms_per_step": round(med * 1e3, 3),
                     "median_extra_us_per_layer": round((med - van_med) * 1e6 / n, 1),
                     "all_ms": [round(t * 1e3, 3) for t in times[cfg]],
                     "first_token_ms": round(min(firsts[cfg]) * 1e3, 2),
                     "first_token_all_ms": [round(t * 1e3, 2) for t in firsts[cfg]]})
        w = wrapper[cfg]
        calls = w["replay_calls"] + w["full_calls"]
        note = ""
        if calls:
            row = rows[-1]
            row["triton_wrapper_us_per_call"] = round((w["replay"] + w["full"]) / calls * 1e6, 2)
            for kind in ("replay", "full"):
                row[f"triton_wrapper_{kind}_calls"] = w[f"{kind}_calls"]
                if w[f"{kind}_calls"]:
                    row[f"triton_wrapper_{kind}_us_per_call"] = round(w[kind] / w[f"{kind}_calls"] * 1e6, 2)
            note = (f"   Triton wrapper {row['triton_wrapper_us_per_call']} us/call (replays "
                    f"{row.get('triton_wrapper_replay_us_per_call', '-')}, full path "
                    f"{row.get('triton_wrapper_full_us_per_call', '-')} us; {w['full_calls'] / calls:.1%} full)")
        print(f"{cfg:<18} {best * 1e3:8.2f} {(best - van) * 1e6:9.0f} {(best - van) * 1e6 / n:10.1f} "
              f"{med * 1e3:10.2f} {(med - van_med) * 1e6 / n:10.1f} {min(firsts[cfg]) * 1e3:10.2f}" + note)
    # dispatcher ops per decode step: a load-independent count; on a GPU every non-view op is a kernel launch
    # (~5-10 us of host time each through PyTorch's eager path)
    print(f"\n{'config':<18} {'ops/step':>9} {'+ops/layer':>11} {'+launch ops/layer':>18}   top extra ops per layer")
    van_ops = count_ops(model, inputs, "vanilla", 9, dims, tau) if args.ops else {}
    op_rows = {}
    for cfg in (cfgs if args.ops else ()):
        ops = count_ops(model, inputs, cfg, 9, dims, tau)
        extra = {k: (ops.get(k, 0) - van_ops.get(k, 0)) / n for k in set(ops) | set(van_ops)}
        total = sum(extra.values())
        launch = sum(v for k, v in extra.items() if k not in VIEW_OPS)
        top = sorted(((v, k) for k, v in extra.items() if abs(v) >= 0.05), reverse=True)[:8]
        op_rows[cfg] = {"ops_per_step": round(sum(ops.values()), 1), "extra_ops_per_layer": round(total, 2),
                        "extra_launch_ops_per_layer": round(launch, 2),
                        "top_extra": {k: round(v, 2) for v, k in top}}
        print(f"{cfg:<18} {sum(ops.values()):9.0f} {total:11.2f} {launch:18.2f}   "
              + ", ".join(f"{k} {v:.2f}" for v, k in top))
    for row in rows:
        row.update(op_rows.get(row["config"], {}))
    micro_us = micro_gpu(device, batch=args.batch) if device.type == "cuda" else micro()
    result = {"model": args.model, "layers": n, "hidden": width, "batch": inputs["input_ids"].shape[0],
              "backend": BACKEND, "device": str(device), "steps": args.steps, "repeats": args.repeats, "tau": tau,
              "torch": torch.__version__, "rows": rows, "micro_us": micro_us,
              "command": "python " + " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.profile:
        result[f"profile_{args.profile}"] = profile_loop(model, inputs, args.profile, args.steps, dims, tau)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
