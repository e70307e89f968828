"""Pieces shared by the Triton kernels: score computation for one key block and the VAR decision.

Scores are kept in base-2 units (natural score times log2(e)) so the softmax can use ``exp2``; the PAINT term
``amp * |s|`` is homogeneous in ``s`` and survives that scaling unchanged, log biases are converted when loaded.
"""

import triton
import triton.language as tl

LOG2E_F = 1.4426950408889634
LN2_F = 0.6931471805599453
LOG2E = tl.constexpr(LOG2E_F)  # jit code may only read constexpr globals
LN2 = tl.constexpr(LN2_F)


@triton.jit
def block_scores(q, K_blk, skn, start_n, n_kv, offs_n, offs_d, d_ok, qpos, is_last, rows_ok,
                 CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, BITS_b, new_bit, cls_in,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_N: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_MASK: tl.constexpr, LOAD_CLS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr,
                 GROUP: tl.constexpr, DOT_FP32: tl.constexpr, HAS_BITS: tl.constexpr,
                 TEST_NEW: tl.constexpr, CLS_GIVEN: tl.constexpr):
    """Base-2 scores of one (rows x BLOCK_N) block with every pre-softmax effect and mask applied.

    Returns the scores and the key classes (zeros when not loaded). ``GROUP == 1``
    means all rows share one head, so the per-key table gathers are 1-D; otherwise rows carry their own head and the
    gather is 2-D. ``HAS_BITS``: the classes are OR-ed with a separate per-key bit row (VAR's per-layer SINK bits),
    whose last key's bit is ``new_bit`` when ``TEST_NEW`` (the decode kernel decided it; memory may not hold it yet).
    ``CLS_GIVEN``: the caller loaded the block's classes (bits included) already, as ``cls_in`` (a prefetch).
    """
    keys = start_n + offs_n
    n_ok = keys < n_kv
    k_ptrs = K_blk + keys[:, None] * skn + offs_d[None, :]
    if CHECK_N:
        if BLOCK_D == HEAD_DIM:
            k = tl.load(k_ptrs, mask=n_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
    if DOT_FP32:
        s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * qk_scale

    if CLS_GIVEN:
        cls = cls_in
    else:
        cls = key_classes(CLS_b, scn, BITS_b, new_bit, keys, n_kv, LOAD_CLS, HAS_BITS, TEST_NEW, CHECK_N)
    if HAS_AMP:
        if GROUP == 1:
            a = tl.load(AMP_row + cls)[None, :]
        else:
            a = tl.load(AMP_row[:, None] + cls[None, :])
        s = tl.where(is_last[:, None], s + a * tl.abs(s), s)
    if HAS_BIAS:
        if GROUP == 1:
            bias = tl.load(LB_row + cls)[None, :]
        else:
            bias = tl.load(LB_row[:, None] + cls[None, :])
        s = s + bias * LOG2E
    if CHECK_N:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    if CAUSAL:
        s = tl.where(keys[None, :] <= qpos[:, None], s, float("-inf"))
    if HAS_MASK:
        allowed = tl.load(MASK_row[:, None] + keys[None, :] * smn, mask=rows_ok[:, None] & n_ok[None, :], other=0)
        s = tl.where(allowed != 0, s, float("-inf"))
    return s, cls


@triton.jit
def key_classes(CLS_b, scn, BITS_b, new_bit, keys, n_kv, LOAD_CLS: tl.constexpr, HAS_BITS: tl.constexpr,
                TEST_NEW: tl.constexpr, CHECK_N: tl.constexpr):
    """The classes of ``keys`` with the SINK bits OR-ed in (see ``block_scores``); past ``n_kv`` 0, and only checked
    with ``CHECK_N`` (a block known to be in range loads unmasked). A prefetch calls it one key block ahead."""
    if LOAD_CLS:
        if CHECK_N:
            cls = tl.load(CLS_b + keys * scn, mask=keys < n_kv, other=0).to(tl.int32)
        else:
            cls = tl.load(CLS_b + keys * scn).to(tl.int32)
    else:
        cls = tl.zeros([keys.shape[0]], dtype=tl.int32)
    if HAS_BITS:
        if CHECK_N:
            bits = tl.load(BITS_b + keys, mask=keys < n_kv, other=0)
        else:
            bits = tl.load(BITS_b + keys)
        if TEST_NEW:
            bits = tl.where(keys == n_kv - 1, new_bit, bits)
        cls = cls | bits
    return cls


@triton.jit
def new_key_sink_bit(HID_row, CH, n_ch, hid_d, threshold, eps2, BLOCK_HID: tl.constexpr, BLOCK_CH: tl.constexpr,
                     STRICT: tl.constexpr):
    """SINK (2) or 0 for one hidden row: ``(max_c |h_c| * threshold)^2 >= ||h||^2 + eps2`` in fp32
    (``reference.SinkBits``)."""
    offs = tl.arange(0, BLOCK_HID)
    x = tl.load(HID_row + offs, mask=offs < hid_d, other=0.0).to(tl.float32)
    ss = tl.sum(x * x, 0)
    c = tl.arange(0, BLOCK_CH)
    c_ok = c < n_ch
    ch = tl.load(CH + c, mask=c_ok, other=0)
    peak = tl.max(tl.abs(tl.load(HID_row + ch, mask=c_ok, other=0.0).to(tl.float32)), 0) * threshold
    lhs = peak * peak
    rhs = ss + eps2
    if STRICT:
        hit = lhs > rhs
    else:
        hit = lhs >= rhs
    return tl.where(hit, 2, 0)


@triton.jit
def var_weights(l, S, Vs, Vns, eligible, p_var, var_rho, var_min_mass):
    """VAR's per-row multipliers (sink keys, visual non-sink keys); 1 where the row is not image-centric.

    The masses are unnormalised sums sharing the normaliser ``l``.
    """
    l_safe = tl.where(l > 0, l, 1.0)
    s_m = S / l_safe
    v_m = (Vs + Vns) / l_safe
    vns_m = Vns / l_safe
    sel = eligible & (p_var > 0) & (v_m >= var_min_mass) & (vns_m > 0) & (vns_m >= var_rho * v_m)
    w_sink = tl.where(sel, 1.0 - p_var, 1.0)
    w_vis = tl.where(sel, 1.0 + p_var * s_m / tl.where(vns_m > 0, vns_m, 1.0), 1.0)
    return w_sink, w_vis


@triton.jit
def one_hot16(cls):
    """(BLOCK_N, 16) fp32 indicator of each key's class, so per-class masses are one small matrix product."""
    return (cls[:, None] == tl.arange(0, 16)[None, :]).to(tl.float32)


@triton.jit
def load_v(V_blk, svn, keys, n_kv, offs_d, d_ok, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
           CHECK_N: tl.constexpr):
    """One (BLOCK_N, BLOCK_D) block of values; masks only where the block or the head dim needs them."""
    v_ptrs = V_blk + keys[:, None] * svn + offs_d[None, :]
    if CHECK_N:
        if BLOCK_D == HEAD_DIM:
            v = tl.load(v_ptrs, mask=(keys < n_kv)[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs, mask=(keys < n_kv)[:, None] & d_ok[None, :], other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    return v


@triton.jit
def pv_product(p, v, acc, DOT_FP32: tl.constexpr):
    """``acc + p @ v``: exact fp32 products for fp32 inputs, tensor-core half products (fp32 accumulate) otherwise."""
    if DOT_FP32:
        return tl.dot(p, v.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(p.to(v.dtype), v, acc)
