"""Speed of the Triton backend against PyTorch SDPA on one GPU, measured side by side in one run.

    python benchmarks/kernels.py [--out DIR] [--sweep]

bf16, 32 query heads = 32 kv heads, head_dim 128, batch 1 prefill and batch 1 / 8 decode. Methods timed:

* ``none``      params=None: our kernel with no class effect.
* ``var``       VAR on a realistic prompt layout (``prompt_layout``): a BOS sink, a short text prefix, an image over
                most of the keys with six visual sink tokens, 64 trailing text tokens; var_p = 0.5 in every head.
                Only query tiles holding text rows after the image (and the prefix) take the VAR path.
* ``var_worst`` VAR with every query row eligible (no visual query tokens): every tile takes the VAR path.
* ``all``       log_bias + amp + VAR + head_scale together (realistic layout).
* ``var_step``  (decode) VAR as a generation step hands it over: the SINK bits in their own per-layer buffer
                (``reference.SinkBits``) and the new token's sink test (a 4096-wide hidden row) left to the kernel,
                which also writes the token's bit.

Decode also runs Qwen2-VL-7B's shape (28 query heads over 4 kv heads, hidden 3584; ``GQA_SHAPES``) at batch 1 for
``none``, ``var`` and ``var_step``; these rows carry no bar (the bars are set for the 32-head workload).

Every variant the run times is compiled first, in parallel (``triton_attention.compile_ahead``; ``compile_ahead_s``
in the metadata), so compiles neither take the run's time one by one nor land inside a timing.
Kernel times are medians of ``triton.testing.do_bench`` (prefill) or of CUDA-graph replays
(``do_bench_cudagraph``, decode, so launch gaps do not count); ours and SDPA alternate, twice, and the medians of
the two rounds are kept. Decode is also timed end to end from Python (``wrapper_us``: host time per call of a tight
loop, GPU synchronised at the end), which is what a host-bound ``generate`` pays per layer. SDPA uses the flash
backend for prefill and, for decode, whichever backend is fastest for that shape (recorded as ``sdpa_backend``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vlmfix.kernels import triton_attention as ta  # noqa: E402
from vlmfix.kernels.classes import LOCAL, SINK, SUMMARY, VISUAL  # noqa: E402
from vlmfix.kernels.reference import ReweightParams, SinkBits  # noqa: E402

H, D, DTYPE = 32, 128, torch.bfloat16
BARS = {("prefill", "none"): 1.15, ("prefill", "var"): 1.25, ("decode", "none"): 1.3, ("decode", "var"): 1.3,
        ("decode", "var_step"): 1.3}


def prompt_layout(n: int, worst: bool = False) -> torch.Tensor:
    cls = torch.zeros(n, dtype=torch.int32)
    cls[0] = SINK
    if worst:
        return cls.cuda()
    start, end = max(2, n // 20), max(3, n - 64)
    cls[start:end] = VISUAL
    for j in torch.linspace(start + 1, end - 2, 6).long():
        cls[j] |= SINK
    cls[start:end:7] |= LOCAL
    cls[start + 3:end:97] |= SUMMARY
    return cls.cuda()


def make_params(method: str, b: int, n: int, heads: int = H, hidden: int = 4096):
    if method == "none":
        return None
    cls = prompt_layout(n, worst=method == "var_worst").expand(b, n).contiguous()
    p = ReweightParams(key_class=cls, var_p=torch.full((b, heads), 0.5, device="cuda"), var_rho=0.5,
                       var_min_mass=0.2)
    if method == "var_step":
        bits = torch.zeros(b, 2 * n, dtype=torch.int32, device="cuda")
        bits[:, :n] = cls & SINK
        hidden_state = torch.randn(b, hidden, device="cuda", dtype=DTYPE)
        p.key_class = cls & ~SINK
        p.sink_bits = SinkBits(bits, 0, hidden_state, torch.tensor([1415, 2533], device="cuda"), hidden ** 0.5 / 20.0,
                               (hidden * 1e-6) ** 0.5)
    if method == "all":
        p.log_bias = torch.randn(b, heads, 16, device="cuda") * 0.3
        p.amp = torch.rand(b, heads, 16, device="cuda") * 0.5
        p.head_scale = torch.rand(b, heads, device="cuda") + 0.5
    return p


def alternate(fa, fb, timer, rounds=2):
    ta_, tb_ = [], []
    for _ in range(rounds):
        ta_.append(timer(fa))
        tb_.append(timer(fb))
    return statistics.median(ta_), statistics.median(tb_)


def median_bench(fn):
    return do_bench(fn, warmup=50, rep=200, return_mode="median")


def graph_bench(fn):
    return do_bench_cudagraph(fn, rep=100, return_mode="median")


def host_us(fn, iters=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def compile_calls(q, k, v, methods, b, n, heads=H, hidden=4096):
    """One call per method, for ``ta.compile_ahead``: the kernels a timing would compile on its first call."""
    for method in methods:
        ta.attention(q, k, v, scale=D ** -0.5, params=make_params(method, b, n, heads, hidden))


def prefill(n: int, methods, records, graph=False, compile_only=False):
    q = torch.randn(1, H, n, D, device="cuda", dtype=DTYPE)
    k = torch.randn(1, H, n, D, device="cuda", dtype=DTYPE)
    v = torch.randn(1, H, n, D, device="cuda", dtype=DTYPE)
    scale = D ** -0.5
    if compile_only:
        return compile_calls(q, k, v, methods, 1, n)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    sdpa_host = host_us(sdpa, iters=100)
    for method in methods:
        p = make_params(method, 1, n)
        ours = lambda: ta.attention(q, k, v, scale=scale, params=p)  # noqa: E731
        ours()
        ms, sdpa_ms = alternate(ours, sdpa, median_bench)
        flops = 4 * n * n / 2 * D * H
        rec = dict(phase="prefill", n=n, batch=1, method=method, ms=ms, sdpa_ms=sdpa_ms,
                   ratio=ms / sdpa_ms, dtype="bf16", heads=H, kv_heads=H, head_dim=D,
                   sdpa_backend="flash", tflops=flops / ms / 1e9, wrapper_us=host_us(ours, iters=100),
                   sdpa_wrapper_us=sdpa_host)
        rec["wrapper_ratio"] = rec["wrapper_us"] / sdpa_host
        if graph:  # GPU time alone (CUDA-graph replay): tells launch-bound from compute-bound at small N
            rec["graph_ms"], rec["sdpa_graph_ms"] = alternate(ours, sdpa, graph_bench)
        records.append(rec)
        print(_fmt(records[-1]), flush=True)


def _sdpa_decode(q, k, v, scale):
    """The fastest SDPA backend for this decode shape, by CUDA-graph replay time."""
    best = None
    gqa = k.shape[1] != q.shape[1]
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                     ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
        def fn(be=be):
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
        try:
            fn()
            t = graph_bench(fn)
        except Exception:  # backend not available for this shape
            continue
        if best is None or t < best[1]:
            best = (name, t, fn)
    return best


# Qwen2-VL-7B's attention shape (28 query heads over 4 kv heads) at the prompt lengths of generate.py: a VAR decode
# tile there holds 4 parts x 7 heads = 28 rows, and batch 1 has only 4 (batch, kv head) programs before splitting.
GQA_SHAPES = ((28, 4, 208), (28, 4, 336), (28, 4, 2900))


def decode(n: int, b: int, methods, records, heads: int = H, kv_heads: int = H, hidden: int = 4096,
           compile_only=False):
    q = torch.randn(b, heads, 1, D, device="cuda", dtype=DTYPE)
    k = torch.randn(b, kv_heads, n, D, device="cuda", dtype=DTYPE)
    v = torch.randn(b, kv_heads, n, D, device="cuda", dtype=DTYPE)
    scale = D ** -0.5
    if compile_only:
        return compile_calls(q, k, v, methods, b, n, heads, hidden)
    name, _, sdpa = _sdpa_decode(q, k, v, scale)
    sdpa_host = host_us(sdpa)
    for method in methods:
        p = make_params(method, b, n, heads, hidden)
        ours = lambda: ta.attention(q, k, v, scale=scale, params=p)  # noqa: E731
        ours()
        ms, sdpa_ms = alternate(ours, sdpa, graph_bench)
        wrapper = host_us(ours)
        gbytes = 2 * b * kv_heads * n * D * 2 / 1e9
        records.append(dict(phase="decode", n=n, batch=b, method=method, ms=ms, sdpa_ms=sdpa_ms, ratio=ms / sdpa_ms,
                            dtype="bf16", heads=heads, kv_heads=kv_heads, head_dim=D, sdpa_backend=name,
                            wrapper_us=wrapper, sdpa_wrapper_us=sdpa_host, wrapper_ratio=wrapper / sdpa_host,
                            tb_per_s=gbytes / ms))
        print(_fmt(records[-1]), flush=True)


def _shape(r) -> str:
    return "" if r.get("kv_heads", H) == r.get("heads", H) == H else f" ({r['heads']}/{r['kv_heads']} heads)"


def _bar(r):
    """The issue's bar for this row: defined for the 32-head workload only."""
    return None if _shape(r) else BARS.get((r["phase"], r["method"]))


def _fmt(r):
    bar = _bar(r)
    verdict = "" if bar is None else ("ok" if r["ratio"] <= bar else f"MISS(>{bar})")
    extra = f" wrapper {r['wrapper_us']:.1f}us vs {r['sdpa_wrapper_us']:.1f}us" if "wrapper_us" in r else ""
    if "graph_ms" in r:
        extra += f" gpu {r['graph_ms']:.4f} vs {r['sdpa_graph_ms']:.4f} ms"
    return (f"{r['phase']:7} n={r['n']:5} b={r['batch']} {r['method'] + _shape(r):9} ours {r['ms']:8.4f} ms  "
            f"sdpa[{r['sdpa_backend']}] {r['sdpa_ms']:8.4f} ms  x{r['ratio']:.3f} {verdict}{extra}")


def _tag(rec, config):
    for r in rec:
        r["phase"], r["config"] = "sweep-" + r["phase"], _jsonable(config)
    return rec


def _jsonable(value):
    """Launch choices as JSON: CONFIGS' (kernel, kind) keys become "kernel/kind"."""
    if isinstance(value, dict):
        return {"/".join(k) if isinstance(k, tuple) else k: _jsonable(v) for k, v in value.items()}
    return value


def _config_with(kernel="decode", **change):
    """The launch configurations with one bf16 entry changed (a ``CONFIGS`` override replaces all of them)."""
    cfgs = {k: dict(v) for k, v in ta.CONFIGS.items()}
    if (kernel, "half") in cfgs:  # the interpreter's configurations have no short forward entry
        cfgs[(kernel, "half")].update(change)
    return cfgs


# Alternatives to the current defaults, timed beside them: the other prefill tile size on each side of the size rule
# (FWD_SHORT_WAVES), the scanning VAR fix-up (with and without its prefetch), for
# the GQA shapes splitting rows from 128 keys and a higher split cap, each of the two class prefetches off, 64-key
# blocks for long batch-1 splits, 128-key blocks for every split, and 64-key splits (more programs, fewer blocks
# each). Phase "decode_gqa" runs the GQA_SHAPES at batch 1.
SWEEP = [
    # The size rule of the forward configuration (FWD_SHORT_WAVES): 128-row tiles where it picks 64, 64-row tiles
    # where it picks 128, and the 64-row tile with 8 warps
    (dict(FWD_SHORT_WAVES=0), "prefill", (640, 1024, 1536, 2048), (1,), ("none", "var", "all")),
    (dict(FWD_SHORT_WAVES=1 << 20), "prefill", (1024, 1536, 2048, 2900, 8192), (1,), ("none", "var", "all")),
    (dict(CONFIGS=_config_with("fwd_short", num_warps=8)), "prefill", (640,), (1,), ("none", "var")),
    # 2 stages: 81-83 KB of shared memory and <= 255 registers x 4 warps, so two 64-row programs fit on one sm_90
    # multiprocessor (3 stages reserve 112 KB: one); untimed
    (dict(CONFIGS=_config_with("fwd_short", num_stages=2)), "prefill", (640, 1024, 2048), (1,), ("none", "var", "all")),
    # the scanning prefill fix-up, against the listed one (pipelined; the default since the 2026-11-29 07:59 sweep)
    (dict(VAR_FIXUP_LIST=False), "prefill", (640, 2900, 8192), (1,), ("var", "var_worst", "all")),
    # rows under 256 keys are not split: 4 programs for Qwen2-VL-7B at batch 1 (its prompts are ~210 keys)
    (dict(DECODE_SPLIT=dict(ta.DECODE_SPLIT, min_keys=128)), "decode_gqa", (), (1,), ("none", "var", "var_step")),
    (dict(DECODE_SPLIT=dict(ta.DECODE_SPLIT, max_splits=32)), "decode_gqa", (), (1,), ("none", "var", "var_step")),
    (dict(DECODE_PREFETCH_CLS=False), "decode", (640, 2900, 8192), (1, 8), ("var", "var_step", "all")),
    (dict(VAR_FIXUP_LIST=False, VAR_FIXUP_PREFETCH=False), "prefill", (640, 2900, 8192), (1,), ("var", "all")),
    (dict(DECODE_SPLIT=dict(ta.DECODE_SPLIT, long_keys=None)), "decode", (8192,), (1,), ("none", "var", "var_step")),
    (dict(CONFIGS=_config_with(BLOCK_N=128, num_stages=2)), "decode", (640, 2900), (1,),
     ("none", "var", "var_step")),
    (dict(DECODE_SPLIT=dict(ta.DECODE_SPLIT, keys_per_split=64, waves=4)), "decode", (640, 2900), (1,),
     ("none", "var", "var_step")),
]
# The choices each earlier default was made over (docs/kernels.md), timed again with ``--sweep-past``.
SWEEP_PAST = [
    (dict(VAR_LAUNCH="pair"), "prefill", (640, 2900, 8192), (1,), ("var", "all")),
    (dict(FUSED_COMBINE=False), "decode", (2900, 8192), (1,), ("none", "var")),
    (dict(DECODE_SPLIT=dict(min_keys=1024, keys_per_split=256, waves=2, busy_keys_per_split=256, busy_waves=2,
                            max_splits=16)),
     "decode", (640, 2900), (1, 8), ("none", "var")),
]


def sweep(records, entries=SWEEP, save=lambda: None, compile_only=False):
    """Alternatives to the defaults in triton_attention, timed the same way (kept in the *_all.json file only)."""
    for overrides, phase, ns, batches, methods in entries:
        rec = []

        def run():
            if phase == "decode_gqa":
                for hq, hkv, n in GQA_SHAPES:
                    decode(n, 1, methods, rec, heads=hq, kv_heads=hkv, hidden=3584, compile_only=compile_only)
                return
            for b in batches:
                for n in ns:
                    if phase == "prefill":
                        prefill(n, methods, rec, graph=n == 640, compile_only=compile_only)
                    else:
                        decode(n, b, methods, rec, compile_only=compile_only)
        with ta.launch_choices(**overrides):
            run()
        if compile_only:
            continue
        records.extend(_tag(rec, overrides))
        save()


def markdown(records, meta) -> str:
    """The readable table of a run (written beside the JSON)."""
    out = [f"# Kernel benchmark: {meta['gpu']}", "",
           "Reproduce (repository root, one H200):", "", "```",
           "python benchmarks/kernels.py --sweep --out DIR   # DIR/kernels_h200.{json,md} (+ kernels_h200_all.json)",
           "python benchmarks/gpu_check.py --out DIR        # correctness at full sizes: DIR/gpu_check.txt", "```", "",
           "| | |", "|---|---|"]
    for key in ("command", "date", "torch", "triton", "direct_launch"):
        if key in meta:
            out.append(f"| {key} | `{meta[key]}` |")
    out.append(f"| launch configs | `{meta['configs']}`; decode split `{meta['decode_split']}`; "
               f"VAR_LAUNCH `{meta['var_launch']}`; FUSED_COMBINE `{meta['fused_combine']}`; "
               f"FWD_SHORT_WAVES `{meta.get('fwd_short_waves')}` |")
    out += ["", "Workload: bf16, 32 query heads = 32 kv heads, head_dim 128; causal prefill at batch 1, decode of one "
            "token against N cached keys at batch 1 and 8. Methods: see the docstring of `benchmarks/kernels.py` "
            "(`var_step` = VAR as a generation step runs it: SINK bits in their own buffer, the new token's sink "
            "test inside the kernel). `ms`: medians of `triton.testing.do_bench` (prefill) or of CUDA-graph replays "
            "(decode); ours and SDPA alternate, two rounds. `GPU ms` (prefill, N = 640): CUDA-graph replay, no host "
            "time. `wrapper µs`: host time per call in a tight loop.", "",
            "| phase | N | batch | method | ours ms | SDPA ms (backend) | ratio | bar | GPU ms ours / SDPA | "
            "wrapper µs ours / SDPA |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["phase"].startswith("sweep"):
            continue
        bar = _bar(r)
        verdict = "—" if bar is None else f"≤ {bar} " + ("✅" if r["ratio"] <= bar else "❌")
        gpu = (f"{r['graph_ms']:.4f} / {r['sdpa_graph_ms']:.4f}" if "graph_ms" in r else "—")
        out.append(f"| {r['phase']} | {r['n']} | {r['batch']} | {r['method']}{_shape(r)} | {r['ms']:.4f} | "
                   f"{r['sdpa_ms']:.4f} ({r['sdpa_backend']}) | {r['ratio']:.2f} | {verdict} | {gpu} | "
                   f"{r['wrapper_us']:.0f} / {r['sdpa_wrapper_us']:.0f} |")
    sweep_rows = [r for r in records if r["phase"].startswith("sweep")]
    if sweep_rows:
        out += ["", "## Sweep (same run: alternatives to the defaults)", "",
                "| phase | N | batch | method | config | ours ms | SDPA ms | ratio |",
                "|---|---|---|---|---|---|---|---|"]
        for r in sweep_rows:
            out.append(f"| {r['phase'][6:]} | {r['n']} | {r['batch']} | {r['method']} | `{r['config']}` | "
                       f"{r['ms']:.4f} | {r['sdpa_ms']:.4f} | {r['ratio']:.2f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--sweep", action="store_true", help="also try a few launch configurations")
    ap.add_argument("--sweep-only", action="store_true", help="only the sweep (writes kernels_h200_sweep.json)")
    ap.add_argument("--sweep-past", action="store_true", help="with a sweep, also the choices of earlier defaults")
    ap.add_argument("--phases", default="prefill,decode", help="which of prefill, decode to time")
    ap.add_argument("--no-compile-ahead", dest="compile_ahead", action="store_false",
                    help="compile each variant on its first timed call instead of all of them first, in parallel")
    ap.add_argument("--sweep-entries", default=None, metavar="LIST",
                    help="with a sweep, only these entries of SWEEP (+ SWEEP_PAST), comma-separated indices")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    records = []
    meta = dict(command="python benchmarks/kernels.py" + (" --sweep" if args.sweep else "")
                + (f" --phases {args.phases}" if phases != {"prefill", "decode"} else "")
                + (f" --sweep-entries {args.sweep_entries}" if args.sweep_entries else ""),
                torch=torch.__version__, triton=triton.__version__, gpu=torch.cuda.get_device_name(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), configs={str(k): v for k, v in
                                                                                 ta.CONFIGS.items()},
                decode_split=dict(ta.DECODE_SPLIT), var_launch=ta.VAR_LAUNCH, fwd_short_waves=ta.FWD_SHORT_WAVES,
                fused_combine=ta.FUSED_COMBINE)
    print(json.dumps(meta), flush=True)
    entries = SWEEP + (SWEEP_PAST if args.sweep_past else [])
    if args.sweep_entries:
        entries = [entries[int(i)] for i in args.sweep_entries.split(",")]

    def dump(name, obj):  # atomically: a run cut by a time limit leaves the files of its last finished group
        path = os.path.join(args.out, name)
        with open(path + ".tmp", "w") as fh:
            fh.write(obj if isinstance(obj, str) else json.dumps(obj, indent=1))
        os.replace(path + ".tmp", path)

    def save():
        meta["direct_launch"] = {name: dict(enabled=launch.enabled, error=launch.error)
                                 for name, launch in ta.direct_launches().items()}
        if args.sweep_only:
            dump("kernels_h200_sweep.json", dict(meta=meta, records=records))
            return
        dump("kernels_h200.json", [r for r in records if not r["phase"].startswith("sweep")])
        dump("kernels_h200.md", markdown(records, meta))
        if args.sweep:
            dump("kernels_h200_all.json", dict(meta=meta, records=records))

    def main_table(compile_only=False):
        group_done = (lambda: None) if compile_only else save
        if "prefill" in phases:
            for n in (640, 2900, 8192):
                prefill(n, ("none", "var", "var_worst", "all"), records, graph=n == 640, compile_only=compile_only)
                group_done()
        if "decode" in phases:
            for b in (1, 8):
                for n in (640, 2900, 8192):
                    decode(n, b, ("none", "var", "var_step", "all"), records, compile_only=compile_only)
                    group_done()
            for hq, hkv, n in GQA_SHAPES:
                decode(n, 1, ("none", "var", "var_step"), records, heads=hq, kv_heads=hkv, hidden=3584,
                       compile_only=compile_only)
                group_done()

    if args.compile_ahead:  # every variant this run launches, compiled in parallel before anything is timed
        calls = [] if args.sweep_only else [lambda: main_table(compile_only=True)]
        if args.sweep or args.sweep_only:
            calls.append(lambda: sweep([], entries, compile_only=True))
        secs = ta.compile_ahead(calls)
        meta["compile_ahead_s"] = round(secs, 1)
        print(f"compiled ahead in {secs:.0f} s", flush=True)
    if args.sweep_only:
        sweep(records, entries, save)
        print("\n" + "\n".join(_fmt(r) + f"  {r.get('config')}" for r in records))
        return
    main_table()
    if args.sweep:
        sweep(records, entries, save)
    save()
    print("direct launch:", meta["direct_launch"], flush=True)
    print("\n" + "\n".join(_fmt(r) for r in records))


if __name__ == "__main__":
    main()
