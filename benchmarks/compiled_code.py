"""What the compiler makes of the attention kernels for an H100/H200 (sm_90), without a GPU.

    python benchmarks/compiled_code.py [--out benchmarks/results]

Each variant is compiled as a real call would compile it: the wrapper (``triton_attention.attention``) runs on CPU
tensors of the benchmark shapes with its launches recorded instead of made, and the recorded arguments give the
signature and the specialisation Triton would derive at launch (a pointer's 16-byte alignment, an integer's being 1
or a multiple of 16). Without that specialisation the compiler cannot prove aligned accesses: it then builds no
asynchronous copies and uses far more registers, so such a compile says little about the real kernel.

Per variant: registers and spills (local memory) from ``cuobjdump -res-usage``, the shared memory a launch reserves
(Triton's dynamic shared memory: the pipelined key/value blocks and the reductions' scratch); from the SASS, the
instructions, block barriers (``BAR``), warp shuffles and global loads inside each key loop, outside the loops, and
(split decode) in the merge, i.e. from the arrival ticket's atomic to the end. Also the wall time of compiling the
decode variants one at a time and in one thread per CPU. Writes ``compiled_sm90.{json,md}``.
Uses the ``cuobjdump`` that Triton's NVIDIA backend ships; the numbers are for this machine's Triton version.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vlmfix.kernels import reference  # noqa: E402
from vlmfix.kernels import triton_attention as ta  # noqa: E402
from vlmfix.kernels._tri_decode import decode_kernel  # noqa: E402
from vlmfix.kernels._tri_fwd import fwd_kernel  # noqa: E402
from vlmfix.kernels.classes import SINK, VISUAL  # noqa: E402
from launch_swap import launches_replaced  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
H200_SMS = 132
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
POINTER = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
           torch.int64: "*i64", torch.uint8: "*u8", torch.bool: "*u8"}


@contextlib.contextmanager
def recorded_launches():
    """The wrapper's two launches record (grid, args, constexprs, options) instead of launching; an H200's SM count."""
    calls = {}

    def recorder(direct):
        name = "decode" if direct.fn is decode_kernel else "fwd"
        return lambda *call: calls.__setitem__(name, call)

    saved_sms = ta._num_sms
    ta._num_sms = lambda device: H200_SMS
    ta._split_cache.clear()
    try:
        with launches_replaced(recorder):
            yield calls
    finally:
        ta._num_sms = saved_sms
        ta._split_cache.clear()


def specialised_source(fn, args, constexprs) -> ASTSource:
    """The kernel source as Triton would compile it for these runtime arguments."""
    runtime = [p for p in fn.params if not p.is_constexpr]
    signature, attrs, consts = {}, {}, dict(constexprs)
    for i, (p, a) in enumerate(zip(runtime, args)):
        if isinstance(a, torch.Tensor):
            signature[p.name] = POINTER[a.dtype]
            aligned = a.data_ptr() % 16 == 0
        elif isinstance(a, bool):
            signature[p.name], aligned = "i1", False
        elif isinstance(a, int):
            if a == 1:  # Triton makes an integer 1 a constant
                signature[p.name], consts[p.name] = "constexpr", 1
                continue
            signature[p.name], aligned = "i32", a % 16 == 0
        else:
            signature[p.name], aligned = "fp32", False
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    for p in fn.params:
        if p.is_constexpr:
            signature[p.name] = "constexpr"
    return ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)


def sass_instructions(cubin: bytes) -> list[tuple[int, str]]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    ins = []
    for line in text.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,6})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())))
    return ins, usage


def _count(ins, lo, hi) -> dict:
    ops = collections.Counter(b.split()[0].split(".")[0] for a, b in ins if lo <= a < hi)
    return {"instructions": sum(ops.values()), "barriers": ops["BAR"], "shuffles": ops["SHFL"], "global_loads":
            ops["LDG"], "async_copies": ops["LDGSTS"]}


def analyse(fn, call) -> dict:
    grid, args, constexprs, options = call
    kernel = triton.compile(specialised_source(fn, args, constexprs), target=TARGET, options=options)
    ins, usage = sass_instructions(kernel.asm["cubin"])
    res = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    loops = []  # backward branches: (target, branch)
    for addr, body in ins:
        m = re.match(r"BRA\s+.*?0x([0-9a-f]+)", body)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr + 1))
    end = ins[-1][0] + 1
    out = {"registers": res.get("REG"), "stack_bytes": res.get("STACK"), "local_bytes": res.get("LOCAL"),
           "shared_bytes": kernel.metadata.shared, "all": _count(ins, 0, end),
           "key_loops": [_count(ins, lo, hi) for lo, hi in loops]}
    in_loops = sum(x["instructions"] for x in out["key_loops"])
    out["outside_loops"] = {k: out["all"][k] - sum(x[k] for x in out["key_loops"]) for k in out["all"]}
    assert out["outside_loops"]["instructions"] == out["all"]["instructions"] - in_loops
    ticket = [a for a, b in ins if b.startswith("ATOMG.E.ADD")]
    if ticket:
        out["merge"] = _count(ins, ticket[0], end)
    out["splits"] = constexprs.get("SPLITS")
    return out


def decode_call(n, method, heads=32, kv_heads=32, hidden=4096):
    q = torch.randn(1, heads, 1, 128, dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, n, 128, dtype=torch.bfloat16)
    cls = torch.zeros(1, n, dtype=torch.int32)
    cls[:, 4:n - 64] = VISUAL
    params = None
    if method != "none":
        params = reference.ReweightParams(key_class=cls, var_p=torch.full((1, heads), 0.6), var_rho=0.5,
                                          var_min_mass=0.2)
        if method == "var_step":  # as a generation step: SINK bits apart, the new key tested by the kernel
            bits = torch.zeros(1, 2 * n, dtype=torch.int32)
            bits[:, 10] = SINK
            params.sink_bits = reference.SinkBits(bits, 0, torch.randn(1, hidden, dtype=torch.bfloat16),
                                                  torch.tensor([1415, 2533]), hidden ** 0.5 / 20, 0.06)
    ta.attention(q, k, k, scale=128 ** -0.5, params=params)


def prefill_call(n, method):
    q = torch.randn(1, 32, n, 128, dtype=torch.bfloat16)
    cls = torch.zeros(1, n, dtype=torch.int32)
    cls[:, 0] = SINK
    cls[:, 32:n - 64] = VISUAL
    params = None if method == "none" else reference.ReweightParams(key_class=cls, var_p=torch.full((1, 32), 0.6))
    ta.attention(q, q, q, scale=128 ** -0.5, params=params)


# (label, kernel, how to call the wrapper, launch choices)
CASES = [
    ("decode N=640 none", "decode", lambda: decode_call(640, "none"), {}),
    ("decode N=640 var", "decode", lambda: decode_call(640, "var"), {}),
    ("decode N=640 var_step", "decode", lambda: decode_call(640, "var_step"), {}),
    ("decode N=640 var, no class prefetch", "decode", lambda: decode_call(640, "var"),
     dict(DECODE_PREFETCH_CLS=False)),
    ("decode N=8192 var_step (128-key blocks)", "decode", lambda: decode_call(8192, "var_step"), {}),
    ("decode N=2048 var_step, 32/8 heads", "decode", lambda: decode_call(2048, "var_step", 32, 8), {}),
    ("decode N=8192 var_step, 32/8 heads (splits capped)", "decode", lambda: decode_call(8192, "var_step", 32, 8),
     {}),
    ("decode N=8192 var_step, 32/8 heads, past the split cap", "decode",
     lambda: decode_call(8192, "var_step", 32, 8), dict(DECODE_SPLIT=dict(ta.DECODE_SPLIT, max_splits=64))),
    ("decode N=336 var_step, 28/4 heads", "decode", lambda: decode_call(336, "var_step", 28, 4, 3584), {}),
    ("decode N=2900 var_step, 28/4 heads (splits capped)", "decode",
     lambda: decode_call(2900, "var_step", 28, 4, 3584), {}),
    ("prefill N=640 none (64-row tiles)", "fwd", lambda: prefill_call(640, "none"), {}),
    ("prefill N=640 var (64-row tiles, listed fix-up)", "fwd", lambda: prefill_call(640, "var"), {}),
    ("prefill N=640 var, 64-row tiles, scanning fix-up", "fwd", lambda: prefill_call(640, "var"),
     dict(VAR_FIXUP_LIST=False)),
    ("prefill N=640 none, 128-row tiles", "fwd", lambda: prefill_call(640, "none"), dict(FWD_SHORT_WAVES=0)),
    ("prefill N=640 var, 128-row tiles (listed fix-up)", "fwd", lambda: prefill_call(640, "var"),
     dict(FWD_SHORT_WAVES=0)),
]


def recorded_call(case) -> tuple:
    """(grid, runtime arguments, constexprs, options) of the launch a case's wrapper call makes."""
    label, kernel, call, choices = case
    with ta.launch_choices(**choices), recorded_launches() as calls:
        call()
    return calls[kernel]


def compile_seconds(threads: int) -> float:
    """Wall time to compile the decode variants of ``CASES`` (fresh cache) with ``threads`` compiling at once: tells
    whether Triton's compiler runs in parallel threads (``triton_attention.compile_ahead`` relies on it)."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    sources = []
    for case in CASES:
        if case[1] == "decode":
            grid, launch_args, constexprs, options = recorded_call(case)
            sources.append((specialised_source(decode_kernel, launch_args, constexprs), options))
    cache = tempfile.mkdtemp(prefix="vlmfix-compile-")
    saved = triton.knobs.cache.dir
    triton.knobs.cache.dir = cache
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda so: triton.compile(so[0], target=TARGET, options=so[1]), sources))
        return time.perf_counter() - t0
    finally:
        triton.knobs.cache.dir = saved
        shutil.rmtree(cache, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    if ta.INTERPRET:
        raise SystemExit("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
    rows = []
    for case in CASES:
        label, kernel, _, choices = case
        rows.append(dict(label=label, choices={k: str(v) for k, v in choices.items()},
                         **analyse(decode_kernel if kernel == "decode" else fwd_kernel, recorded_call(case))))
        r = rows[-1]
        print(f"{label:62} regs {r['registers']:>3} local {r['local_bytes']} | outside loops "
              f"{r['outside_loops']['instructions']} instr {r['outside_loops']['barriers']} BAR"
              + (f" | merge {r['merge']['instructions']} instr {r['merge']['barriers']} BAR "
                 f"{r['merge']['shuffles']} SHFL {r['merge']['global_loads']} LDG" if "merge" in r else ""),
              flush=True)
    meta = dict(command="python benchmarks/compiled_code.py", triton=triton.__version__, target="sm_90",
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    threads = len(os.sched_getaffinity(0))
    meta["compile_decode_variants_s"] = {"cpus": threads, "one_at_a_time": round(compile_seconds(1), 1),
                                         f"{threads}_threads": round(compile_seconds(threads), 1)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compiled_sm90.json"), "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    lines = [f"# Compiled code of the attention kernels for sm_90 (Triton {meta['triton']}, {meta['date']})", "",
             f"`{meta['command']}`; what each column means: the docstring of `benchmarks/compiled_code.py`. Key loop:"
             " the first loop of the variant (unmasked key blocks), per key block.", "",
             "| variant | splits | registers | local bytes | shared bytes | key loop: instr / BAR / async copies | "
             "outside loops: instr / BAR | merge: instr / BAR / SHFL / LDG |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        loop = r["key_loops"][0] if r["key_loops"] else None
        lp = f"{loop['instructions']} / {loop['barriers']} / {loop['async_copies']}" if loop else "—"
        mg = (f"{r['merge']['instructions']} / {r['merge']['barriers']} / {r['merge']['shuffles']} / "
              f"{r['merge']['global_loads']}" if "merge" in r else "—")
        lines.append(f"| {r['label']} | {r['splits'] or '—'} | {r['registers']} | {r['local_bytes']} | "
                     f"{r['shared_bytes']} | {lp} | {r['outside_loops']['instructions']} / "
                     f"{r['outside_loops']['barriers']} | {mg} |")
    lines += ["", "Every loop of the prefill variants with VAR, in code order (instructions / asynchronous copies / "
              "global loads): the VAR tile's flash loops, its fix-up loops, then the plain tile's flash loops.", ""]
    for r in rows:
        if r["label"].startswith("prefill") and len(r["key_loops"]) > 2:
            loops = ", ".join(f"{lp['instructions']} / {lp['async_copies']} / {lp['global_loads']}"
                              for lp in r["key_loops"])
            lines.append(f"- {r['label']}: {loops}")
    ct = meta["compile_decode_variants_s"]
    lines += ["", f"Compiling the {sum(1 for c in CASES if c[1] == 'decode')} decode variants with a fresh cache on "
              f"this machine ({ct['cpus']} CPUs): {ct['one_at_a_time']} s one at a time, "
              f"{ct[str(ct['cpus']) + '_threads']} s in {ct['cpus']} threads (Triton's compiler runs in parallel "
              "threads; `triton_attention.compile_ahead` relies on it)."]
    with open(os.path.join(args.out, "compiled_sm90.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
