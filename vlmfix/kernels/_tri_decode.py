"""Single-query kernels: split-K decode (+ combine) and the last-row probabilities used for statistics.

At decode a batch-1 step has only ``B * Hkv`` (query-group) programs, far fewer than the GPU has multiprocessors, so
the key range is split across programs (flash-decoding); the last program of each group to finish merges the
partial softmaxes (or, with ``FUSED_COMBINE`` off, a separate combine launch does).
One program holds all query heads of a kv head, so K/V are read once per group.

VAR cannot use the prefill kernel's fix-up pass here (a split sees only part of the row, and a second pass would read
the keys twice in a memory-bound kernel). Instead each head keeps four value accumulators under one running max, one
per part of the keys: 0 neither sink nor visual, 1 text sinks, 2 visual sinks, 3 visual non-sinks. Each is a row of
the tile whose probabilities are zeroed outside its part, so its row sum is that part's mass: the masses VAR decides
on (sink S = P1 + P2, visual sink Vs = P2, visual non-sink Vns = P3, total = all four) cost no reduction beyond the
one plain attention does per key block. VAR is decided once the whole row is known (in the epilogue, or where the
splits are merged), and the four accumulators are folded with VAR's weights (1, w_sink, w_sink, w_vis).
"""

import triton
import triton.language as tl

from ._tri_common import (LOG2E, LN2, block_scores, key_classes, load_v, new_key_sink_bit, one_hot16, pv_product,
                          var_weights)


@triton.jit
def _split_loop(acc, l_i, m_i, mass, cls_next, q, part, lo, hi, K_blk, V_blk, skn, svn, n_kv, offs_n, offs_d, d_ok,
                qpos, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, BITS_b, new_bit,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHECK_N: tl.constexpr,
                HAS_MASK: tl.constexpr, LOAD_CLS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr,
                PARTS: tl.constexpr, GROUP: tl.constexpr, DOT_FP32: tl.constexpr, WANT_MASS: tl.constexpr,
                HAS_BITS: tl.constexpr, TEST_NEW: tl.constexpr, PREFETCH_CLS: tl.constexpr):
    """Online softmax over keys [lo, hi). With VAR (``PARTS == 4``) each row keeps only its part's keys, so ``l_i``
    is that part's mass (the class masses of ``WANT_MASS`` are taken before, over every key).

    ``PREFETCH_CLS``: each iteration issues the next key block's class load (``cls_next``, carried in and out) before
    this block's work, so its latency overlaps the block instead of preceding the block's score effects."""
    for start_n in range(lo, hi, BLOCK_N):
        cls_now = cls_next
        if PREFETCH_CLS:
            cls_next = key_classes(CLS_b, scn, BITS_b, new_bit, start_n + BLOCK_N + offs_n, n_kv, LOAD_CLS, HAS_BITS,
                                   TEST_NEW, True)
        s, cls = block_scores(q, K_blk, skn, start_n, n_kv, offs_n, offs_d, d_ok, qpos, rows_ok, rows_ok,
                              CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, BITS_b, new_bit, cls_now,
                              HEAD_DIM, BLOCK_D, CHECK_N, False, HAS_MASK, LOAD_CLS, HAS_BIAS, HAS_AMP, GROUP,
                              DOT_FP32, HAS_BITS, TEST_NEW, PREFETCH_CLS)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        if WANT_MASS:
            mass = mass * alpha[:, None] + tl.dot(p, one_hot16(cls), input_precision="ieee")
        if PARTS == 4:
            sink = (cls & 2) != 0
            vis = (cls & 1) != 0
            key_part = tl.where(sink, tl.where(vis, 2, 1), tl.where(vis, 3, 0))
            p = tl.where(part[:, None] == key_part[None, :], p, 0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_v(V_blk, svn, start_n + offs_n, n_kv, offs_d, d_ok, HEAD_DIM, BLOCK_D, CHECK_N)
        acc = pv_product(p, v, acc * alpha[:, None], DOT_FP32)
        m_i = m_new
    return acc, l_i, m_i, mass, cls_next


@triton.jit
def _head_sum(x, same, part, k: tl.constexpr):
    """Per row: the sum of ``x`` over the rows of the same head in part ``k``."""
    return tl.sum(tl.where(same & (part == k)[None, :], x[None, :], 0.0), 1)


@triton.jit
def decode_kernel(Q, K, V, O, MASK, CLS, LB, AMP, VARP, HS, LSE, MASS, WS_O, WS_S, WS_M, CNT, BITS, HID, CH,
                  sqb, sqh, skb, skh, skn, svb, svh, svn, sob, soh,
                  smb, smh, smn, scb, scn, slb_b, slb_h, sam_b, sam_h, svp_b, svp_h, shs_b, shs_h, sbits_b, shid_b,
                  qk_scale, var_rho, var_min_mass, sink_threshold, sink_eps2, N, H, G, chunk, bits_first, n_ch, hid_d,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  SPLITS: tl.constexpr, PARTS: tl.constexpr, GROUP: tl.constexpr, HAS_MASK: tl.constexpr,
                  LOAD_CLS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr, HAS_HS: tl.constexpr,
                  WANT_LSE: tl.constexpr, WANT_MASS: tl.constexpr, DOT_FP32: tl.constexpr,
                  FUSED_COMBINE: tl.constexpr, HAS_BITS: tl.constexpr,
                  TEST_NEW: tl.constexpr, STRICT: tl.constexpr, BLOCK_HID: tl.constexpr, BLOCK_CH: tl.constexpr,
                  PREFETCH_CLS: tl.constexpr):
    """Rows of the tile are (part, query head of the group): VAR's four value accumulators of a head become four
    rows of one product, so VAR costs no extra matrix product and, for groups of up to four heads, no extra rows.

    ``HAS_BITS``: VAR's per-layer SINK bits come as their own row (``BITS``, from column ``bits_first``) and are
    OR-ed into the classes. ``TEST_NEW``: the new key's bit is decided here from the token's hidden state (``HID``)
    by the programs whose split holds that key; the kv-head-0 one stores it for later steps."""
    split = tl.program_id(0)
    pid = tl.program_id(1)
    n_kv_heads = H // G
    b = pid // n_kv_heads
    hk = pid % n_kv_heads

    r = tl.arange(0, BLOCK_M)
    rows_ok = r < PARTS * G
    part = r // G
    h_row = hk * G + r % G
    qpos = tl.zeros([BLOCK_M], dtype=tl.int32) + (N - 1)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * sqb + h_row[:, None] * sqh + offs_d[None, :], mask=rows_ok[:, None] & d_ok[None, :],
                other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    K_blk = K + b * skb + hk * skh
    V_blk = V + b * svb + hk * svh
    CLS_b = CLS + b * scb
    MASK_row = MASK + b * smb + h_row * smh
    if GROUP == 1:
        LB_row = LB + b * slb_b + hk * slb_h
        AMP_row = AMP + b * sam_b + hk * sam_h
    else:
        LB_row = LB + b * slb_b + h_row * slb_h
        AMP_row = AMP + b * sam_b + h_row * sam_h

    lo = split * chunk
    hi = tl.minimum(lo + chunk, N)
    mid = lo + ((hi - lo) // BLOCK_N) * BLOCK_N
    BITS_b = BITS + b * sbits_b + bits_first
    new_bit = N * 0
    if TEST_NEW:
        if hi == N:
            new_bit = new_key_sink_bit(HID + b * shid_b, CH, n_ch, hid_d, sink_threshold, sink_eps2, BLOCK_HID,
                                       BLOCK_CH, STRICT)
            if hk == 0:
                tl.store(BITS_b + N - 1, new_bit)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    mass = tl.zeros([BLOCK_M, 16], dtype=tl.float32)
    if PREFETCH_CLS:
        cls_next = key_classes(CLS_b, scn, BITS_b, new_bit, lo + offs_n, N, LOAD_CLS, HAS_BITS, TEST_NEW, True)
    else:
        cls_next = offs_n  # unused
    acc, l_i, m_i, mass, cls_next = _split_loop(
        acc, tl.zeros([BLOCK_M], dtype=tl.float32), m_i, mass, cls_next, q, part, lo, mid, K_blk, V_blk, skn, svn, N,
        offs_n, offs_d, d_ok, qpos, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, BITS_b, new_bit,
        HEAD_DIM, BLOCK_D, BLOCK_N, False, HAS_MASK, LOAD_CLS, HAS_BIAS, HAS_AMP, PARTS, GROUP, DOT_FP32, WANT_MASS,
        HAS_BITS, TEST_NEW, PREFETCH_CLS)
    acc, l_i, m_i, mass, cls_next = _split_loop(
        acc, l_i, m_i, mass, cls_next, q, part, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok,
        qpos, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, BITS_b, new_bit,
        HEAD_DIM, BLOCK_D, BLOCK_N, True, HAS_MASK, LOAD_CLS, HAS_BIAS, HAS_AMP, PARTS, GROUP, DOT_FP32, WANT_MASS,
        HAS_BITS, TEST_NEW, PREFETCH_CLS)

    if SPLITS == 1:
        if PARTS == 4:
            # Gather each head's part masses onto all of its rows, decide VAR per head, then fold the four part
            # rows of every head into its first row with one small (BLOCK_M x BLOCK_M) weighting product.
            same = ((r[:, None] % G) == (r[None, :] % G)) & rows_ok[None, :]
            p_sink_text = _head_sum(l_i, same, part, 1)
            p_sink_vis = _head_sum(l_i, same, part, 2)
            p_vns = _head_sum(l_i, same, part, 3)
            l_i = _head_sum(l_i, same, part, 0) + p_sink_text + p_sink_vis + p_vns
            q_cls = tl.load(CLS_b + (N - 1) * scn).to(tl.int32)
            p_var = tl.load(VARP + b * svp_b + h_row * svp_h)
            w_sink, w_vis = var_weights(l_i, p_sink_text + p_sink_vis, p_sink_vis, p_vns, (q_cls & 1) == 0, p_var,
                                        var_rho, var_min_mass)
            w_row = tl.where(part == 0, 1.0, tl.where(part == 3, w_vis, w_sink))
            fold = tl.where(same & (r < G)[:, None], w_row[None, :], 0.0)
            acc = tl.dot(fold, acc, input_precision="ieee")
        out_ok = r < G
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        if HAS_HS:
            out = out * tl.load(HS + b * shs_b + h_row * shs_h)[:, None]
        tl.store(O + b * sob + h_row[:, None] * soh + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=out_ok[:, None] & d_ok[None, :])
        stat_row = b * H + h_row
        if WANT_LSE:
            lse = tl.where(l_i > 0, (m_i + tl.log2(l_safe)) * LN2, float("-inf"))
            tl.store(LSE + stat_row, lse, mask=out_ok)
        if WANT_MASS:
            c = tl.arange(0, 16)
            tl.store(MASS + stat_row[:, None] * 16 + c[None, :], mass / l_safe[:, None], mask=out_ok[:, None])
    else:
        ws_row = (pid * SPLITS + split) * BLOCK_M + r
        # Only the rows in use: with one head per kv head, 4 (VAR) or 1 of the tile's 16 rows.
        tl.store(WS_O + ws_row[:, None] * BLOCK_D + offs_d[None, :], acc, mask=rows_ok[:, None])
        tl.store(WS_S + ws_row * 4, m_i, mask=rows_ok)
        tl.store(WS_S + ws_row * 4 + 1, l_i, mask=rows_ok)  # with VAR, the row's part mass
        if WANT_MASS:
            c = tl.arange(0, 16)
            tl.store(WS_M + ws_row[:, None] * 16 + c[None, :], mass, mask=rows_ok[:, None])
        if FUSED_COMBINE:
            # The last split of this (batch, kv head) to finish merges all of them: no second launch. The barrier
            # makes the whole program's stores precede the (release) ticket; the winner's (acquire) ticket makes
            # every other split's stores visible to its loads, which bypass L1.
            tl.debug_barrier()
            ticket = tl.atomic_add(CNT + pid, 1)
            if ticket == SPLITS - 1:
                tl.debug_barrier()
                for g in tl.static_range(GROUP):
                    _merge_head(O, CLS, VARP, HS, LSE, MASS, WS_O, WS_S, WS_M, b, hk * G + g, sob, soh, scb, scn,
                                svp_b, svp_h, shs_b, shs_h, var_rho, var_min_mass, N, H, G, HEAD_DIM, BLOCK_D,
                                BLOCK_M, SPLITS, PARTS, HAS_HS, WANT_LSE, WANT_MASS)
                tl.atomic_xchg(CNT + pid, 0)  # ready for the next launch


@triton.jit
def _merge_head(O, CLS, VARP, HS, LSE, MASS, WS_O, WS_S, WS_M, b, h, sob, soh, scb, scn, svp_b, svp_h, shs_b, shs_h,
                var_rho, var_min_mass, N, H, G, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                SPLITS: tl.constexpr, PARTS: tl.constexpr, HAS_HS: tl.constexpr, WANT_LSE: tl.constexpr,
                WANT_MASS: tl.constexpr):
    """Merges the splits of one (batch, query head) row: rescale each split to the common max, add; VAR is decided
    on the merged part masses. The splits are unrolled (``SPLITS`` is a compile-time constant, at most
    ``DECODE_SPLIT["max_splits"]``): each split's values are scalars or one row spread over the threads, so merging
    is elementwise work in every thread, with every load issued before the arithmetic that needs it. A merge that
    sums over a (splits x head dim) tile instead crosses warps through shared memory and block barriers; at the end
    of the launch's critical path that cost 0.5-0.8 us per split for VAR on an H200
    (benchmarks/results/decode_anatomy.md)."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row0 = (b * (H // G) + h // G) * SPLITS * BLOCK_M + h % G  # split s: row0 + s * BLOCK_M; part k: + k * G
    m_max = tl.load(WS_S + row0 * 4, cache_modifier=".cg")
    for sp in tl.static_range(1, SPLITS):
        m_max = tl.maximum(m_max, tl.load(WS_S + (row0 + sp * BLOCK_M) * 4, cache_modifier=".cg"))
    m_use = tl.where(m_max == float("-inf"), 0.0, m_max)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    l_i = 0.0
    if PARTS == 4:
        acc_sink = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_v = tl.zeros([BLOCK_D], dtype=tl.float32)
        p_ts = 0.0
        p_vs = 0.0
        p_vns = 0.0
    if WANT_MASS:
        c = tl.arange(0, 16)
        mass = tl.zeros([16], dtype=tl.float32)
    for sp in tl.static_range(SPLITS):
        row = row0 + sp * BLOCK_M
        w = tl.exp2(tl.load(WS_S + row * 4, cache_modifier=".cg") - m_use)
        acc += w * tl.load(WS_O + row * BLOCK_D + offs_d, cache_modifier=".cg")
        l_i += w * tl.load(WS_S + row * 4 + 1, cache_modifier=".cg")
        if PARTS == 4:
            # the other parts of this head (text sinks, visual sinks, visual non-sinks) share the split's max
            acc_sink += w * (tl.load(WS_O + (row + G) * BLOCK_D + offs_d, cache_modifier=".cg")
                             + tl.load(WS_O + (row + 2 * G) * BLOCK_D + offs_d, cache_modifier=".cg"))
            acc_v += w * tl.load(WS_O + (row + 3 * G) * BLOCK_D + offs_d, cache_modifier=".cg")
            p_ts += w * tl.load(WS_S + (row + G) * 4 + 1, cache_modifier=".cg")
            p_vs += w * tl.load(WS_S + (row + 2 * G) * 4 + 1, cache_modifier=".cg")
            p_vns += w * tl.load(WS_S + (row + 3 * G) * 4 + 1, cache_modifier=".cg")
        if WANT_MASS:
            mass += w * tl.load(WS_M + row * 16 + c, cache_modifier=".cg")
    if PARTS == 4:
        l_i = l_i + p_ts + p_vs + p_vns
        q_cls = tl.load(CLS + b * scb + (N - 1) * scn).to(tl.int32)
        p_var = tl.load(VARP + b * svp_b + h * svp_h)
        w_sink, w_vis = var_weights(l_i, p_ts + p_vs, p_vs, p_vns, (q_cls & 1) == 0, p_var, var_rho, var_min_mass)
        acc = acc + w_sink * acc_sink + w_vis * acc_v
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe
    if HAS_HS:
        out = out * tl.load(HS + b * shs_b + h * shs_h)
    tl.store(O + b * sob + h * soh + offs_d, out.to(O.dtype.element_ty), mask=d_ok)
    stat = b * H + h
    if WANT_LSE:
        tl.store(LSE + stat, tl.where(l_i > 0, (m_max + tl.log2(l_safe)) * LN2, float("-inf")))
    if WANT_MASS:
        tl.store(MASS + stat * 16 + c, mass / l_safe)


@triton.jit
def combine_kernel(O, CLS, VARP, HS, LSE, MASS, WS_O, WS_S, WS_M, sob, soh, scb, scn, svp_b, svp_h, shs_b, shs_h,
                   var_rho, var_min_mass, N, H, G,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, SPLITS: tl.constexpr,
                   PARTS: tl.constexpr, HAS_HS: tl.constexpr, WANT_LSE: tl.constexpr, WANT_MASS: tl.constexpr):
    """The merge as its own launch, one program per (batch, query head) (``FUSED_COMBINE`` off)."""
    pid = tl.program_id(0)
    _merge_head(O, CLS, VARP, HS, LSE, MASS, WS_O, WS_S, WS_M, pid // H, pid % H, sob, soh, scb, scn, svp_b, svp_h,
                shs_b, shs_h, var_rho, var_min_mass, N, H, G, HEAD_DIM, BLOCK_D, BLOCK_M, SPLITS, PARTS, HAS_HS,
                WANT_LSE, WANT_MASS)


@triton.jit
def last_row_kernel(Q, K, MASK, CLS, LB, AMP, VARP, LSE, MASS, OUT,
                    sqb, sqh, sqm, skb, skh, skn, smb, smh, smm, smn, scb, scn, slb_b, slb_h, sam_b, sam_h,
                    svp_b, svp_h, qk_scale, var_rho, var_min_mass, M, N, H, G,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr,
                    LOAD_CLS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr, HAS_VAR: tl.constexpr):
    """Final (post-VAR) probabilities of the last query row, recomputed from the main kernel's LSE and masses."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = keys < N
    q = tl.load(Q + b * sqb + h * sqh + (M - 1) * sqm + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    k = tl.load(K + b * skb + (h // G) * skh + keys[:, None] * skn + offs_d[None, :],
                mask=n_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    s = tl.sum(q[None, :] * k, 1) * qk_scale
    if LOAD_CLS:
        cls = tl.load(CLS + b * scb + keys * scn, mask=n_ok, other=0).to(tl.int32)
    else:
        cls = tl.zeros([BLOCK_N], dtype=tl.int32)
    if HAS_AMP:
        s = s + tl.load(AMP + b * sam_b + h * sam_h + cls) * tl.abs(s)
    if HAS_BIAS:
        s = s + tl.load(LB + b * slb_b + h * slb_h + cls) * LOG2E
    s = tl.where(n_ok, s, float("-inf"))
    if HAS_MASK:
        allowed = tl.load(MASK + b * smb + h * smh + (M - 1) * smm + keys * smn, mask=n_ok, other=0)
        s = tl.where(allowed != 0, s, float("-inf"))
    stat_row = (b * H + h) * M + M - 1
    lse = tl.load(LSE + stat_row) * LOG2E
    p = tl.where(lse == float("-inf"), 0.0, tl.exp2(s - tl.where(lse == float("-inf"), 0.0, lse)))
    if HAS_VAR:
        c = tl.arange(0, 16)
        mass = tl.load(MASS + stat_row * 16 + c)
        S = tl.sum(tl.where((c & 2) != 0, mass, 0.0), 0)
        Vs = tl.sum(tl.where((c & 3) == 3, mass, 0.0), 0)
        Vns = tl.sum(tl.where((c & 3) == 1, mass, 0.0), 0)
        q_cls = tl.load(CLS + b * scb + (N - 1) * scn).to(tl.int32)
        p_var = tl.load(VARP + b * svp_b + h * svp_h)
        w_sink, w_vis = var_weights(S * 0.0 + 1.0, S, Vs, Vns, (q_cls & 1) == 0, p_var, var_rho, var_min_mass)
        p = p * tl.where((cls & 2) != 0, w_sink, tl.where((cls & 1) != 0, w_vis, 1.0))
    tl.store(OUT + pid_bh * N + keys, p, mask=n_ok)
