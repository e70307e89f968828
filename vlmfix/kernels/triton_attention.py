"""Triton backend of ``vlmfix.kernels.attention``: same signature, return convention and semantics as ``reference``.

Queries of more than one row go to the fused forward kernel (``_tri_fwd``, one launch, VAR included: see
``VAR_LAUNCH``); a single query row (decode) goes to the split-K decode kernel, which also merges the splits
(``_tri_decode``); ``last_row_probs`` adds one small launch.

The wrapper is on the per-layer, per-token path of host-bound generation, so it does no host synchronisation and
allocates nothing but the output (and statistics, when asked for): the split workspace is cached per device and
every choice is plain integer arithmetic on shapes. Offsets inside the kernels are 32-bit: each tensor must have
fewer than 2**31 elements.

Set ``TRITON_INTERPRET=1`` before importing this module to run the kernels on the CPU (tests only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Iterable

import torch
import triton

from ._launch import DirectLaunch, current_device
from ._recipes import MASK, NATURAL_SLOTS, OUT, Q, DecodeRecipe, decode_signature
from ._tri_common import LOG2E_F
from ._tri_decode import combine_kernel, decode_kernel, last_row_kernel
from ._tri_fwd import fwd_kernel
from .reference import STATS, ReweightParams, fold_sink_bits

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_STATS = frozenset(STATS)
_NO_STATS = frozenset()

# Launch configurations. The interpreter gets small blocks so that small test shapes still cover several tiles,
# several key blocks and split decoding; on the GPU they are the ones measured on an H200 (docs/kernels.md).
# Keys: (kernel, "half" | "fp32").
if INTERPRET:
    CONFIGS = {
        ("fwd", "half"): dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1),
        ("fwd", "fp32"): dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1),
        ("decode", "half"): dict(BLOCK_N=16, num_warps=4, num_stages=1),
        ("decode", "fp32"): dict(BLOCK_N=16, num_warps=4, num_stages=1),
        ("decode_long", "half"): dict(BLOCK_N=32, num_warps=4, num_stages=1),
        ("decode_long", "fp32"): dict(BLOCK_N=32, num_warps=4, num_stages=1),
    }
    # (here every launch counts as busy: one "multiprocessor"; long_keys are reached by the tests' longer rows)
    DECODE_SPLIT = dict(min_keys=32, keys_per_split=32, waves=64, busy_keys_per_split=32, busy_waves=64,
                        long_keys=None, busy_long_keys=96, max_splits=16)
else:
    CONFIGS = {
        ("fwd", "half"): dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
        # Launches of under FWD_SHORT_WAVES waves of 128-row programs (at batch 1 and 32 heads, prompts of up to 2048
        # tokens): the causal grid's longest tiles, and with VAR the tile of the text rows after the image (every
        # key, then the fix-up), are then the critical path, and 64-row tiles halve them. Timed side by side on an
        # H200 (2026-11-29 09:22, docs/kernels.md): VAR GPU time at N = 640 44.6 -> 35.6 us; timed ratios to SDPA
        # at 1024 / 1536 / 2048, plain 0.78 / 0.69 / 0.70 -> 0.67 / 0.61 / 0.63, VAR 1.22 / 1.05 / 1.00 -> 1.00 /
        # 0.81 / 0.80; at 2900 (5.6 waves) VAR 0.96 -> 1.03 and at 8192 0.79 -> 0.91, so larger grids keep 128 rows.
        ("fwd_short", "half"): dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
        ("fwd", "fp32"): dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
        ("decode", "half"): dict(BLOCK_N=64, num_warps=4, num_stages=3),
        ("decode", "fp32"): dict(BLOCK_N=32, num_warps=4, num_stages=2),
        ("decode_long", "half"): dict(BLOCK_N=128, num_warps=4, num_stages=2),
    }
    # Split the keys when a decode launch would leave multiprocessors idle (measured on an H200, docs/kernels.md):
    # under one wave of programs (batch 1) from 256 keys in 128-key pieces for ~2 waves; a launch of a wave or
    # more (batch 8) only in pieces of at least 1024 keys for ~4 waves. Splits of at least ``long_keys`` keys
    # (``busy_long_keys`` when the launch fills the GPU; None: never) take the ``decode_long`` configuration:
    # 128-key blocks halve the per-block costs of key classes (at batch 1, N = 8192: VAR 1.26x -> 1.14x SDPA).
    # At most ``max_splits`` splits: the merge unrolls them (_tri_decode._merge_head), and compiled for sm_90, 16
    # unrolled VAR splits keep the kernel at 130 registers where 32 take it to 192 (compiled_sm90.md). It binds
    # only with few kv heads at batch 1 (4 for Qwen2-VL-7B would want 66 splits).
    DECODE_SPLIT = dict(min_keys=256, keys_per_split=128, waves=2, busy_keys_per_split=1024, busy_waves=4,
                        long_keys=768, busy_long_keys=None, max_splits=16)

# The kernels launch without Triton's per-call binding once a call signature was seen (``_launch.py``): the two
# per-layer ones, and the statistics and separate-merge launches (recorded attention maps ask for the last row's
# probabilities at every step).
_decode_launch = DirectLaunch(decode_kernel, enabled=not INTERPRET)
_fwd_launch = DirectLaunch(fwd_kernel, enabled=not INTERPRET)
_combine_launch = DirectLaunch(combine_kernel, enabled=not INTERPRET)
_last_row_launch = DirectLaunch(last_row_kernel, enabled=not INTERPRET)
_FOUR_WARPS = {"num_warps": 4}
_OPTIONS = ("num_warps", "num_stages")


def _split_cfg(cfg: dict) -> tuple[dict, dict]:
    """A launch configuration as (constexpr block sizes, compile options)."""
    return ({k: v for k, v in cfg.items() if k not in _OPTIONS}, {k: v for k, v in cfg.items() if k in _OPTIONS})


# Every allocation goes through this name so tests can hand out NaN-filled buffers and catch unwritten elements.
_empty = torch.empty
_sm_count: dict = {}
_split_cache: dict = {}  # decode and forward plans per shape; cleared by launch_choices or whoever edits the choices
# How a prefill with VAR splits its tiles between launches (measured on an H200, docs/kernels.md):
# "one":  a single launch, each tile on its own path (the default: with the one-pass VAR tile it was the fastest
#         at every measured length);
# "pair": plain launch skipping VAR tiles + VAR launch over them (fewer registers per variant, one more launch);
# "redo": plain launch computing every tile + VAR launch overwriting VAR tiles (VAR tiles paid twice).
VAR_LAUNCH = "one"
_workspace: dict = {}
_counters: dict = {}
# Split decode merges its partial results in the last program to finish (one launch) instead of a combine launch.
FUSED_COMBINE = True
# Decode with key classes: load the next key block's classes one iteration ahead, so that their latency overlaps a
# block's work instead of preceding its score effects (docs/kernels.md has the H200 timings of both settings).
DECODE_PREFETCH_CLS = True
# VAR prefill fix-up over a list of the special key blocks that the flash loop builds, with no branch on loaded data,
# so the compiler pipelines it (the scanning fix-up's loads are not: compiled_sm90.md). Measured on an H200 against
# the scanning fix-up (docs/kernels.md): GPU time of the realistic VAR prompt -9 % at 640 keys, -4 % at 2900, equal at
# 8192; +7-11 % where every key block is special (``var_worst``), which the scanning fix-up keeps for (False).
VAR_FIXUP_LIST = True
# The scanning fix-up (VAR_FIXUP_LIST False): next block's classes one iteration ahead, value load beside the key load.
VAR_FIXUP_PREFETCH = True
# A forward launch whose grid of ("fwd", kind) programs is under this many waves (one program per multiprocessor)
# takes the ("fwd_short", kind) configuration where there is one (see CONFIGS).
FWD_SHORT_WAVES = 4
# A decode call whose signature was seen replays its launch from a recipe (``_recipes.py``) instead of deriving it.
DECODE_RECIPES = True
_decode_recipes: dict = {}  # signature -> DecodeRecipe, oldest first; cleared with the plans
# A signature holds the key count, which grows by one every decode step, so a recipe is replayed only by the other
# layers of its own step. Keeping the last _MAX_RECIPES (a few steps' worth: 4 signatures a step with every method,
# times sliding-window layers and devices) lets recipes die young. A table that piled up every step's recipes (~21
# Python objects each) until it was cleared pushed them through the collector's generations: 13.6 young collections
# a generate instead of vanilla's 0.4, and full collections, which walk every object of the process (192 ms on the
# CPU, 304 ms on the H200's host) (benchmarks/results/gc_recipes_cpu.md).
_MAX_RECIPES = 64
_SPLIT_KEYS = frozenset(("min_keys", "keys_per_split", "waves", "busy_keys_per_split", "busy_waves", "max_splits"))
_LAUNCH_CHOICES = ("CONFIGS", "DECODE_SPLIT", "VAR_LAUNCH", "FUSED_COMBINE", "DECODE_PREFETCH_CLS",
                   "VAR_FIXUP_PREFETCH", "VAR_FIXUP_LIST", "FWD_SHORT_WAVES", "DECODE_RECIPES")


@contextlib.contextmanager
def launch_choices(**overrides):
    """Temporarily replace module-level launch choices (benchmark sweeps, GPU checks); restored on exit.

    Dict-valued choices are updated in place, so code holding a reference to them sees the change too.
    """
    unknown = set(overrides) - set(_LAUNCH_CHOICES)
    if unknown:
        raise ValueError(f"unknown launch choices {sorted(unknown)}; supported: {list(_LAUNCH_CHOICES)}")
    if "DECODE_SPLIT" in overrides:  # it replaces the whole dict: a key left out would fail at the next decode
        missing = _SPLIT_KEYS - set(overrides["DECODE_SPLIT"])
        if missing:
            raise ValueError(f"DECODE_SPLIT override lacks {sorted(missing)}; it needs {sorted(_SPLIT_KEYS)} "
                             "(long_keys and busy_long_keys are optional)")
    module = sys.modules[__name__]
    saved = {}
    for name, value in overrides.items():
        cur = getattr(module, name)
        saved[name] = dict(cur) if isinstance(cur, dict) else cur
        _set_choice(module, name, value)
    _split_cache.clear()
    _decode_recipes.clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            _set_choice(module, name, value)
        _split_cache.clear()
        _decode_recipes.clear()


def direct_launches() -> dict:
    """The kernels' launchers by name (``DirectLaunch``: whether each still launches directly, and why not)."""
    return {"decode": _decode_launch, "forward": _fwd_launch, "combine": _combine_launch, "last_row": _last_row_launch}


@contextlib.contextmanager
def compile_only():
    """Inside: a call compiles every kernel it would launch and launches none, so nothing it returns is written.
    For compiling ahead."""
    launches = tuple(direct_launches().values())
    saved = [launch.compile_only for launch in launches]
    for launch in launches:
        launch.compile_only = not INTERPRET  # the interpreter has nothing to compile
    try:
        yield
    finally:
        for launch, was in zip(launches, saved):
            launch.compile_only = was


def compile_ahead(calls, workers: int | None = None) -> float:
    """Runs each of ``calls`` (functions that call ``attention``) in ``compile_only`` mode, with the compiles in a
    thread pool, and returns the seconds it took. A first call of each kernel variant otherwise compiles it on the
    spot, one after the other: seconds each for these kernels, most of a GPU benchmark's or check's time. Later
    calls with the same variants find them compiled. Without Triton's ``AsyncCompileMode`` the compiles run in turn."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    mode = getattr(triton, "AsyncCompileMode", None)
    workers = workers or max(1, min(16, len(os.sched_getaffinity(0))))
    with contextlib.ExitStack() as stack:
        if mode is not None and workers > 1:
            stack.enter_context(mode(stack.enter_context(ThreadPoolExecutor(workers))))
        stack.enter_context(compile_only())
        for call in calls:
            call()
    return time.perf_counter() - t0


def _set_choice(module, name, value):
    cur = getattr(module, name)
    if isinstance(cur, dict):
        cur.clear()
        cur.update(value)
    else:
        setattr(module, name, value)


def _num_sms(device: torch.device) -> int:
    if INTERPRET or device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    n = _sm_count.get(idx)
    if n is None:
        n = _sm_count[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return n


def decode_splits(n: int, programs: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """(number of splits, keys per split); one split when the launch already fills the GPU or the row is short."""
    key = (n, programs, block_n, device)
    hit = _split_cache.get(key)
    if hit is not None:
        return hit
    hit = _split_cache[key] = _decode_splits(n, programs, block_n, device)
    return hit


def decode_plan(n: int, programs: int, kind: str, device: torch.device) -> tuple[dict, dict, int, int]:
    """(constexpr block sizes, compile options, number of splits, keys per split) of a decode launch."""
    key = ("plan", n, programs, kind, device)
    hit = _split_cache.get(key)
    if hit is None:
        cfg = CONFIGS[("decode", kind)]
        splits, chunk = decode_splits(n, programs, cfg["BLOCK_N"], device)
        busy = programs >= _num_sms(device)
        long_keys = DECODE_SPLIT.get("busy_long_keys" if busy else "long_keys")
        long_cfg = CONFIGS.get(("decode_long", kind))
        if long_cfg is not None and long_keys is not None and splits > 1 and chunk >= long_keys:
            cfg = long_cfg
            splits, chunk = decode_splits(n, programs, cfg["BLOCK_N"], device)
        hit = _split_cache[key] = (*_split_cfg(cfg), splits, chunk)
    return hit


def fwd_plan(m: int, columns: int, group: int, kind: str, device: torch.device) -> tuple[dict, dict, int]:
    """(constexpr block sizes, compile options, query heads packed per tile) of a forward launch of ``m`` query rows
    in ``columns`` (batch x head groups) grid columns. The grid under the regular configuration decides: under
    ``FWD_SHORT_WAVES`` waves, the short one (smaller tiles, more programs)."""
    key = ("fwd", m, columns, group, kind, device)
    hit = _split_cache.get(key)
    if hit is None:
        cfg = CONFIGS[("fwd", kind)]
        short = CONFIGS.get(("fwd_short", kind))
        if short is not None:
            pack = _pack(m, group, cfg["BLOCK_M"])
            programs = -(-m * pack // cfg["BLOCK_M"]) * (columns // pack)
            if programs < FWD_SHORT_WAVES * _num_sms(device):
                cfg = short
        blocks, options = _split_cfg(cfg)
        hit = _split_cache[key] = (blocks, options, _pack(m, group, blocks["BLOCK_M"]))
    return hit


def _pack(m: int, group: int, block_m: int) -> int:
    """GQA: the query heads of one kv head share a tile when all their rows fit in one (short chunks, decode-like)."""
    return group if m * group <= block_m else 1


def _decode_splits(n: int, programs: int, block_n: int, device: torch.device) -> tuple[int, int]:
    cfg = DECODE_SPLIT
    if n < cfg["min_keys"]:
        return 1, n
    # A launch that already fills the GPU (batch 8) only gains from splitting long rows; batch 1 from short ones too.
    busy = programs >= _num_sms(device)
    waves = cfg["busy_waves"] if busy else cfg["waves"]
    per_split = cfg["busy_keys_per_split"] if busy else cfg["keys_per_split"]
    want = -(-waves * _num_sms(device) // programs)
    splits = max(1, min(want, -(-n // per_split), cfg["max_splits"]))
    if splits == 1:
        return 1, n
    chunk = -(-(-(-n // splits)) // block_n) * block_n
    return -(-n // chunk), chunk


def _tickets(device: torch.device, numel: int) -> torch.Tensor:
    """Zeroed int32 arrival counters of the fused split combine; each launch leaves them zero again."""
    buf = _counters.get(device)
    if buf is None or buf.numel() < numel:
        buf = _counters[device] = torch.zeros(max(numel, 1024), dtype=torch.int32, device=device)
    return buf


def _pow2(x: int) -> int:
    # triton.next_power_of_2 goes through triton's constexpr machinery: microseconds per call on this hot path.
    return 1 << (x - 1).bit_length()


def _ws(device: torch.device, name: str, numel: int) -> torch.Tensor:
    """Grow-only scratch per device; reused across calls on the (single) stream that issues them."""
    key = (device, name)
    buf = _workspace.get(key)
    if buf is None or buf.numel() < numel:
        buf = _workspace[key] = _empty(max(numel, 1 << 16), dtype=torch.float32, device=device)
    return buf


_ZERO2 = (0, 0)


def _bh_strides(t: torch.Tensor | None) -> tuple[int, int]:
    """Batch and head strides of a per-(batch, head) table; 0 where the table broadcasts."""
    if t is None:
        return _ZERO2
    st, sh = t.stride(), t.shape
    return (st[0] if sh[0] != 1 else 0), (st[1] if sh[1] != 1 else 0)


def _table(t: torch.Tensor | None, last: int | None) -> torch.Tensor | None:
    """fp32 with a unit stride on the class axis; a no-op for the tensors methods normally build."""
    if t is None:
        return None
    if t.dtype != torch.float32:
        t = t.float()
    if last is not None and t.stride(-1) != 1:
        t = t.contiguous()
    return t


def _sink_bit_args(sb, n: int, dummy: torch.Tensor) -> tuple:
    """The decode kernel's view of ``SinkBits`` (``reference.SinkBits``): bit row, hidden row and channels, their batch
    strides, the first column, the channel count and width, the test's two constants, TEST_NEW and STRICT."""
    if sb is None:
        return dummy, dummy, dummy, 0, 0, 0, 0, 0, 0.0, 0.0, False, False
    sb.check_columns(n)
    bits = sb.bits
    sbits_b = bits.stride(0) if bits.shape[0] != 1 else 0
    hid = sb.hidden
    if hid is None:
        return bits, dummy, dummy, sbits_b, 0, sb.first, 0, 0, 0.0, 0.0, False, False
    if hid.stride(-1) != 1:
        hid = hid.contiguous()
    shid_b = hid.stride(0) if hid.shape[0] != 1 else 0
    return (bits, hid, sb.channels, sbits_b, shid_b, sb.first, sb.channels.shape[0], hid.shape[-1],
            float(sb.threshold), float(sb.eps_norm) ** 2, True, bool(sb.strict))


def _remember(sig, inputs, grid, args, constexprs, options, mask_u8, compiled):
    """Keeps the decode launch just made as the recipe of its signature, if it used its inputs as they came (see
    ``_recipes.py``): each leading tensor is its own input, the query standing in for an absent one, the output, or a
    fixed tensor of this module (workspace, counters, channel list); every address 16-byte aligned. ``compiled`` is
    what the launch returned (``DirectLaunch.__call__``): the recipe calls it directly."""
    q, out = inputs[Q], args[3]
    everything = [*inputs, out]
    slots, fixed = [], []
    for i, t in enumerate(args[:len(NATURAL_SLOTS)]):
        own = NATURAL_SLOTS[i]
        if t.data_ptr() & 15:
            return
        if own is not None and (t is everything[own] or (own == MASK and t is mask_u8)):
            slots.append(own)
        elif t is q:
            slots.append(Q)
        elif t is out:
            slots.append(OUT)
        elif own is None:
            fixed.append(t)
            slots.append(len(everything) + len(fixed) - 1)
        else:  # an input replaced by a copy or a conversion: a replay would read the input itself
            return
    recipe = DecodeRecipe(grid, args, constexprs, options, tuple(slots), fixed, tuple(out.shape), out.dtype,
                          out.device, _decode_launch, compiled)
    if len(_decode_recipes) >= _MAX_RECIPES:  # (pop with a default: two threads may both evict the same oldest one)
        _decode_recipes.pop(next(iter(_decode_recipes), None), None)
    _decode_recipes[sig] = recipe


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, mask: torch.Tensor | None = None,
              params: ReweightParams | None = None, want: Iterable[str] = ()) -> tuple[torch.Tensor, dict]:
    """Re-weighted attention on the GPU (or the Triton interpreter). See ``reference.attention`` for the contract."""
    if q.is_cuda and q.get_device() != current_device():
        # a model split over GPUs (device_map): launch on this layer's GPU, where Triton looks its kernels up
        with torch.cuda.device(q.device):
            return attention(q, k, v, scale=scale, mask=mask, params=params, want=want)
    sig = None  # a one-row call without statistics: its recipe signature (see _recipes.py)
    if want:
        want = frozenset(want)
        if not want <= _STATS:
            raise ValueError(f"unknown statistics {sorted(want - _STATS)}; supported: {list(STATS)}")
    else:
        want = _NO_STATS
        if q.shape[2] == 1 and DECODE_RECIPES:
            sig, inputs = decode_signature(q, k, v, scale, mask, params)
            recipe = _decode_recipes.get(sig)
            if recipe is not None:
                out = recipe.replay(_decode_launch, inputs, _empty)
                if out is not None:
                    return out, {}
    bsz, hq, m, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"the Triton backend supports fp16/bf16/fp32 inputs, got {q.dtype}")
    group = hq // hkv
    qs, ks, vs = q.stride(), k.stride(), v.stride()
    if qs[3] != 1:
        q = q.contiguous()
        qs = q.stride()
    if ks[3] != 1:
        k = k.contiguous()
        ks = k.stride()
    if vs[3] != 1:
        v = v.contiguous()
        vs = v.stride()
    dev = q.device

    cls = lb = amp = var_p = hs = sb = None
    rho = min_mass = 0.0
    amp_start = n - 1
    if params is not None and params.sink_bits is not None:
        sb = params.sink_bits
        if m > 1 or want or params.key_class is None or sb.bits.dtype != torch.int32:
            # Not the decode fast path: the bits (and the new key's test) are folded in on the host.
            params = dataclasses.replace(params, key_class=fold_sink_bits(params.key_class, sb, n, m), sink_bits=None)
            sb = None
    if params is not None and not params.is_identity:
        cls, lb, amp, var_p, hs = params.key_class, params.log_bias, params.amp, params.var_p, params.head_scale
        if cls is None and (lb is not None or amp is not None or var_p is not None):
            raise ValueError("key_class is required when log_bias, amp or var_p is given")
        lb, amp = _table(lb, 16), _table(amp, 16)
        var_p, hs = _table(var_p, None), _table(hs, None)
        rho, min_mass = float(params.var_rho), float(params.var_min_mass)
        if params.amp_start is not None:
            amp_start = int(params.amp_start)
            if m == 1 and amp_start > n - 1:
                amp = None  # the single decode row is before the emphasis start
    elif params is not None:
        cls = params.key_class

    want_lrp = "last_row_probs" in want
    want_lse = "lse" in want or want_lrp
    want_mass = "class_mass" in want or (want_lrp and var_p is not None)
    lse = _empty((bsz, hq, m), dtype=torch.float32, device=dev) if want_lse else None
    mass = _empty((bsz, hq, m, 16), dtype=torch.float32, device=dev) if want_mass else None

    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"attention masks must be boolean (True = attend), got {mask.dtype}")
        if mask.dim() == 2:
            mask = mask.view(1, 1, *mask.shape)
        mask_u8 = mask.view(torch.uint8)
        ms = [mask.stride(i) if mask.shape[i] != 1 else 0 for i in range(4)]
    else:
        mask_u8, ms = q, [0, 0, 0, 0]
    cs = (cls.stride(0) if cls.shape[0] != 1 else 0, cls.stride(1)) if cls is not None else (0, 0)
    if params is not None:
        lbs, ams, vps, hss = _bh_strides(lb), _bh_strides(amp), _bh_strides(var_p), _bh_strides(hs)
    else:
        lbs = ams = vps = hss = _ZERO2

    load_cls = cls is not None and (lb is not None or amp is not None or want_mass)
    common = dict(HAS_MASK=mask is not None, HAS_BIAS=lb is not None, HAS_AMP=amp is not None,
                  HAS_HS=hs is not None, WANT_LSE=want_lse, WANT_MASS=want_mass)
    dot_fp32 = INTERPRET or q.dtype == torch.float32
    kind = "fp32" if q.dtype == torch.float32 else "half"
    block_d = max(16, _pow2(d))
    qk_scale = float(scale) * LOG2E_F
    dummy = q
    ptrs = (mask_u8, cls if cls is not None else dummy, lb if lb is not None else dummy,
            amp if amp is not None else dummy, var_p if var_p is not None else dummy, hs if hs is not None else dummy,
            lse if lse is not None else dummy, mass if mass is not None else dummy)
    out = _empty((bsz, m, hq, d), dtype=q.dtype, device=dev)

    if m == 1:
        parts = 4 if var_p is not None else 1  # VAR: one accumulator row per part of the keys (_tri_decode.py)
        block_m = max(16, _pow2(parts * group))
        blocks, options, splits, chunk = decode_plan(n, bsz * hkv, kind, dev)
        fused = splits > 1 and FUSED_COMBINE
        if splits > 1:
            rows = bsz * hkv * splits * block_m
            ws_o = _ws(dev, "o", rows * block_d)
            ws_s = _ws(dev, "s", rows * 4)
            ws_m = _ws(dev, "m", rows * 16) if want_mass else ws_s
            cnt = _tickets(dev, bsz * hkv) if fused else ws_s
        else:
            ws_o = ws_s = ws_m = cnt = out
        bits, hid, chans, sbits_b, shid_b, first, n_ch, hid_d, threshold, eps2, test_new, strict = \
            _sink_bit_args(sb, n, dummy)
        load_cls_any = load_cls or var_p is not None or sb is not None
        grid = (splits, bsz * hkv, 1)
        args = (q, k, v, out, *ptrs, ws_o, ws_s, ws_m, cnt, bits, hid, chans,
                qs[0], qs[1], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], m * hq * d, d, ms[0], ms[1], ms[3],
                *cs, *lbs, *ams, *vps, *hss, sbits_b, shid_b,
                qk_scale, rho, min_mass, threshold, eps2, n, hq, group, chunk, first, n_ch, hid_d)
        constexprs = dict(HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=block_m, SPLITS=splits, PARTS=parts, GROUP=group,
                          DOT_FP32=dot_fp32, LOAD_CLS=load_cls_any,
                          FUSED_COMBINE=fused, HAS_BITS=sb is not None,
                          TEST_NEW=test_new, STRICT=strict, BLOCK_HID=_pow2(hid_d) if test_new else 16,
                          BLOCK_CH=max(2, _pow2(n_ch)) if test_new else 2,
                          PREFETCH_CLS=DECODE_PREFETCH_CLS and load_cls_any, **common, **blocks)
        compiled = _decode_launch(grid, args, constexprs, options)
        if sig is not None and (fused or splits == 1):
            _remember(sig, inputs, grid, args, constexprs, options, mask_u8 if mask is not None else None, compiled)
        if splits > 1 and not fused:
            _combine_launch(
                (bsz * hq, 1, 1),
                (out, ptrs[1], ptrs[4], ptrs[5], ptrs[6], ptrs[7], ws_o, ws_s, ws_m,
                 m * hq * d, d, *cs, *vps, *hss, rho, min_mass, n, hq, group),
                dict(HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=block_m, SPLITS=splits, PARTS=parts, HAS_HS=hs is not None,
                     WANT_LSE=want_lse, WANT_MASS=want_mass),
                _FOUR_WARPS)
    else:
        blocks, options, pack = fwd_plan(m, bsz * hq, group, kind, dev)
        grid = (triton.cdiv(m * pack, blocks["BLOCK_M"]), bsz * (hq // pack), 1)
        args = (q, k, v, out, *ptrs,
                qs[0], qs[1], qs[2], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], m * hq * d, hq * d, d,
                *ms, *cs, *lbs, *ams, *vps, *hss, qk_scale, rho, min_mass, m, n, hq, group, amp_start)

        def launch(var_pass):
            listed = VAR_FIXUP_LIST and var_pass >= 2
            _fwd_launch(grid, args, dict(HEAD_DIM=d, BLOCK_D=block_d, GROUP=pack, CAUSAL=mask is None,
                                         LOAD_CLS=load_cls, VAR_PASS=var_pass, DOT_FP32=dot_fp32, **common,
                                         **blocks, FIXUP_PREFETCH=VAR_FIXUP_PREFETCH and var_pass >= 2,
                                         FIXUP_LIST=listed,
                                         MAX_BLOCKS=_pow2(-(-n // blocks["BLOCK_N"])) if listed else 1),
                          options)

        if var_p is None:
            launch(0)
        elif VAR_LAUNCH == "one":
            launch(3)
        else:
            # Plain flash loop for tiles without VAR-eligible rows, then the VAR pass over the others.
            launch(1 if VAR_LAUNCH == "pair" else 0)
            launch(2)

    stats = {}
    if want:
        if "lse" in want:
            stats["lse"] = lse
        if "class_mass" in want:
            stats["class_mass"] = mass
        if want_lrp:
            lrp = _empty((bsz, hq, n), dtype=torch.float32, device=dev)
            lcfg = CONFIGS[("decode", kind)]
            _last_row_launch(
                (triton.cdiv(n, lcfg["BLOCK_N"]), bsz * hq, 1),
                (q, k, *ptrs[:5], lse, mass if mass is not None else dummy, lrp,
                 q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                 ms[0], ms[1], ms[2], ms[3], *cs, *lbs, *ams, *vps, qk_scale, rho, min_mass, m, n, hq, group),
                dict(HEAD_DIM=d, BLOCK_D=block_d, BLOCK_N=lcfg["BLOCK_N"], HAS_MASK=mask is not None,
                     LOAD_CLS=cls is not None, HAS_BIAS=lb is not None, HAS_AMP=amp is not None,
                     HAS_VAR=var_p is not None),
                _FOUR_WARPS)
            stats["last_row_probs"] = lrp
    return out, stats
