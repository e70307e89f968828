"""The fused forward kernel: one program owns a tile of query rows and streams the keys once (online softmax).

VAR needs each row's final class masses before it can weight the values. A tile first checks whether any of its
rows can be affected (a non-visual query token in a head with ``var_p > 0``); tiles without such rows (in a prompt,
the whole image) run the plain flash loop. The others run the same loop unweighted while summing the masses VAR
decides on, decide per row, rescale the accumulator by the visual weight and then correct only the key blocks that
hold sinks or non-visual keys (``_var_tile``). ``VAR_PASS`` selects how tiles are split between launches (0: no
VAR; 1 and 2: the plain and the VAR half of a two-launch pair; 3: both paths in one launch, the default).
``docs/kernels.md`` has the accounting.
"""

import triton
import triton.language as tl

from ._tri_common import LN2, block_scores, load_v, one_hot16, pv_product, var_weights


@triton.jit
def _attend(acc, l_i, m_i, mass, S, Vs, Vns, special, n_special, q, lo, hi, K_blk, V_blk, skn, svn, n_kv, offs_n,
            offs_d, d_ok, qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale,
            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHECK_N: tl.constexpr,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, LOAD_CLS: tl.constexpr, HAS_BIAS: tl.constexpr,
            HAS_AMP: tl.constexpr, GROUP: tl.constexpr, DOT_FP32: tl.constexpr, VAR_MASS: tl.constexpr,
            WANT_MASS: tl.constexpr, LIST_SPECIAL: tl.constexpr, MAX_BLOCKS: tl.constexpr):
    """Online-softmax loop over keys [lo, hi). ``VAR_MASS`` also sums the sink / visual-sink / visual-non-sink
    masses VAR decides on (three masked row sums per block, sharing the running max). ``LIST_SPECIAL`` also
    appends the index of each key block holding a sink or a non-visual key to ``special`` (``n_special`` of them),
    for the listed fix-up."""
    for start_n in range(lo, hi, BLOCK_N):
        s, cls = block_scores(q, K_blk, skn, start_n, n_kv, offs_n, offs_d, d_ok, qpos, is_last, rows_ok,
                              CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, CLS_b, 0, 0,
                              HEAD_DIM, BLOCK_D, CHECK_N, CAUSAL, HAS_MASK, LOAD_CLS, HAS_BIAS, HAS_AMP, GROUP,
                              DOT_FP32, False, False, False)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if WANT_MASS:
            mass = mass * alpha[:, None] + tl.dot(p, one_hot16(cls), input_precision="ieee")
        if VAR_MASS:
            sink = ((cls & 2) != 0)[None, :]
            vis = ((cls & 1) != 0)[None, :]
            S = S * alpha + tl.sum(tl.where(sink, p, 0.0), 1)
            Vs = Vs * alpha + tl.sum(tl.where(sink & vis, p, 0.0), 1)
            Vns = Vns * alpha + tl.sum(tl.where(vis & (~sink), p, 0.0), 1)
            if LIST_SPECIAL:
                # the slot at n_special takes this block; it stays only if the block is special
                special = tl.where(tl.arange(0, MAX_BLOCKS) == n_special, start_n // BLOCK_N, special)
                n_special += tl.max(_needs_fixup(cls).to(tl.int32), 0)
        v = load_v(V_blk, svn, start_n + offs_n, n_kv, offs_d, d_ok, HEAD_DIM, BLOCK_D, CHECK_N)
        acc = pv_product(p, v, acc, DOT_FP32)
        m_i = m_new
    return acc, l_i, m_i, mass, S, Vs, Vns, special, n_special


@triton.jit
def _needs_fixup(cls):
    """Per key: VAR's fix-up revisits it (a sink, or a key that is not visual)."""
    return ((cls & 2) != 0) | ((cls & 1) == 0)


@triton.jit
def _fixup_probs(s, cls, m_use, c_sink, c_rest):
    """A block's probabilities under the row's final max, times what the fix-up adds per key: ``c_sink`` on sink
    keys, nothing on visual non-sink keys (the accumulator's rescale covered them), ``c_rest`` on the rest."""
    sink = ((cls & 2) != 0)[None, :]
    vis = ((cls & 1) != 0)[None, :]
    coef = tl.where(sink, c_sink[:, None], tl.where(vis, 0.0, c_rest[:, None]))
    return tl.exp2(s - m_use[:, None]) * coef


@triton.jit
def _var_fixup(acc, m_use, c_sink, c_rest, q, lo, hi, K_blk, V_blk, skn, svn, n_kv, offs_n, offs_d, d_ok, qpos,
               is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHECK_N: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr,
               GROUP: tl.constexpr, DOT_FP32: tl.constexpr, PREFETCH: tl.constexpr):
    """Adds ``c_sink * p`` on sink keys and ``c_rest * p`` on non-visual non-sink keys to the (final-max) value
    accumulator; key blocks holding neither (the inside of an image) are skipped after reading their classes.

    This loop branches on loaded data, so the compiler does not pipeline it: each special block waits for its
    class, key and value loads in turn. ``PREFETCH`` issues the next block's class load one iteration ahead and a
    special block's value load together with its key load, so fewer of those latencies are paid one after another.
    """
    if PREFETCH:
        c_next = tl.load(CLS_b + (lo + offs_n) * scn, mask=(lo + offs_n) < n_kv, other=1).to(tl.int32)
    else:
        c_next = offs_n  # unused
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + offs_n
        if PREFETCH:
            c = c_next
            ahead = keys + BLOCK_N
            c_next = tl.load(CLS_b + ahead * scn, mask=ahead < n_kv, other=1).to(tl.int32)
        elif CHECK_N:
            c = tl.load(CLS_b + keys * scn, mask=keys < n_kv, other=1).to(tl.int32)
        else:
            c = tl.load(CLS_b + keys * scn).to(tl.int32)
        if tl.sum(_needs_fixup(c).to(tl.int32), 0) > 0:
            if PREFETCH:
                v = load_v(V_blk, svn, keys, n_kv, offs_d, d_ok, HEAD_DIM, BLOCK_D, CHECK_N)
            # keys past n_kv carry class 1 here; their scores are -inf whatever their class
            s, cls = block_scores(q, K_blk, skn, start_n, n_kv, offs_n, offs_d, d_ok, qpos, is_last, rows_ok,
                                  CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, CLS_b, 0, c,
                                  HEAD_DIM, BLOCK_D, CHECK_N, CAUSAL, HAS_MASK, True, HAS_BIAS, HAS_AMP, GROUP,
                                  DOT_FP32, False, False, PREFETCH)
            p = _fixup_probs(s, cls, m_use, c_sink, c_rest)
            if not PREFETCH:
                v = load_v(V_blk, svn, keys, n_kv, offs_d, d_ok, HEAD_DIM, BLOCK_D, CHECK_N)
            acc = pv_product(p, v, acc, DOT_FP32)
    return acc


@triton.jit
def _var_fixup_listed(acc, m_use, c_sink, c_rest, special, n_special, q, K_blk, V_blk, skn, svn, n_kv, offs_n, offs_d,
                      d_ok, qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                      HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr, GROUP: tl.constexpr,
                      DOT_FP32: tl.constexpr, MAX_BLOCKS: tl.constexpr):
    """``_var_fixup`` over the special key blocks the flash loop listed, and only those: no branch on loaded data,
    so the compiler can pipeline the loop like the flash loop (each block's key, value and class loads issued
    ahead), where the scanning fix-up waits for each special block's loads in turn. Every listed block is treated
    as possibly partial (range and causal masks), which costs a few selects."""
    slots = tl.arange(0, MAX_BLOCKS)
    for j in range(0, n_special):
        start_n = tl.sum(tl.where(slots == j, special, 0), 0) * BLOCK_N
        s, cls = block_scores(q, K_blk, skn, start_n, n_kv, offs_n, offs_d, d_ok, qpos, is_last, rows_ok,
                              CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, CLS_b, 0, 0,
                              HEAD_DIM, BLOCK_D, True, CAUSAL, HAS_MASK, True, HAS_BIAS, HAS_AMP, GROUP,
                              DOT_FP32, False, False, False)
        p = _fixup_probs(s, cls, m_use, c_sink, c_rest)
        v = load_v(V_blk, svn, start_n + offs_n, n_kv, offs_d, d_ok, HEAD_DIM, BLOCK_D, True)
        acc = pv_product(p, v, acc, DOT_FP32)
    return acc


@triton.jit
def fwd_kernel(Q, K, V, O, MASK, CLS, LB, AMP, VARP, HS, LSE, MASS,
               sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, som, soh,
               smb, smh, smm, smn, scb, scn, slb_b, slb_h, sam_b, sam_h, svp_b, svp_h, shs_b, shs_h,
               qk_scale, var_rho, var_min_mass, M, N, H, G, AMP_START,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               GROUP: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, LOAD_CLS: tl.constexpr,
               HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr, VAR_PASS: tl.constexpr, HAS_HS: tl.constexpr,
               WANT_LSE: tl.constexpr, WANT_MASS: tl.constexpr, DOT_FP32: tl.constexpr,
               FIXUP_PREFETCH: tl.constexpr, FIXUP_LIST: tl.constexpr, MAX_BLOCKS: tl.constexpr):
    # Longest (causal) tiles first, so the tail of the grid is short work.
    pid_t = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    n_hb = H // GROUP
    b = pid_bh // n_hb
    h0 = (pid_bh % n_hb) * GROUP
    hk = h0 // G

    rows = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rows < M * GROUP
    i_row = tl.minimum(rows // GROUP, M - 1)
    h_row = h0 + rows % GROUP
    qpos = N - M + i_row
    is_last = rows_ok & (qpos >= AMP_START)  # rows that get the dual-stream emphasis (default: the last one)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q = tl.load(Q + b * sqb + h_row[:, None] * sqh + i_row[:, None] * sqm + offs_d[None, :],
                mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    K_blk = K + b * skb + hk * skh
    V_blk = V + b * svb + hk * svh
    CLS_b = CLS + b * scb
    MASK_row = MASK + b * smb + h_row * smh + i_row * smm
    if GROUP == 1:
        LB_row = LB + b * slb_b + h0 * slb_h
        AMP_row = AMP + b * sam_b + h0 * sam_h
    else:
        LB_row = LB + b * slb_b + h_row * slb_h
        AMP_row = AMP + b * sam_b + h_row * sam_h

    # Keys below `mid` are visible to every row of the tile and in range: no per-element masking there.
    if CAUSAL:
        first_i = (pid_t * BLOCK_M) // GROUP
        last_i = tl.minimum((pid_t * BLOCK_M + BLOCK_M - 1) // GROUP, M - 1)
        hi = tl.minimum(N - M + last_i + 1, N)
        mid = tl.minimum(((N - M + first_i + 1) // BLOCK_N) * BLOCK_N, hi)
    else:
        hi = N
        mid = (N // BLOCK_N) * BLOCK_N

    if VAR_PASS == 0:
        # No VAR: n_eligible is a compile-time 0, so only the plain branch below is built.
        eligible = rows_ok
        p_var = tl.zeros([BLOCK_M], dtype=tl.float32)
        n_eligible = 0
    else:
        q_cls = tl.load(CLS_b + qpos * scn).to(tl.int32)
        p_var = tl.load(VARP + b * svp_b + h_row * svp_h)
        eligible = rows_ok & ((q_cls & 1) == 0) & (p_var > 0)
        n_eligible = tl.sum(eligible.to(tl.int32), 0)
    # Pass 1 of a pair leaves tiles with eligible rows to pass 2, which computes only those; 0 and 3 do each tile.
    if n_eligible > 0:
        if VAR_PASS != 1:
            _var_tile(q, eligible, p_var, var_rho, var_min_mass, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d,
                      d_ok, qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, O, HS, LSE,
                      MASS, b, h_row, i_row, sob, som, soh, shs_b, shs_h, M, H, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
                      CAUSAL, HAS_MASK, HAS_BIAS, HAS_AMP, GROUP, DOT_FP32, HAS_HS, WANT_LSE, WANT_MASS, FIXUP_PREFETCH,
                      FIXUP_LIST, MAX_BLOCKS)
    else:
        if VAR_PASS != 2:
            _plain_tile(q, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok, qpos, is_last, rows_ok, CLS_b,
                        scn, LB_row, AMP_row, MASK_row, smn, qk_scale, O, HS, LSE, MASS, b, h_row, i_row, sob, som,
                        soh, shs_b, shs_h, M, H, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, HAS_MASK, LOAD_CLS,
                        HAS_BIAS, HAS_AMP, GROUP, DOT_FP32, HAS_HS, WANT_LSE, WANT_MASS)


@triton.jit
def _plain_tile(q, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok, qpos, is_last, rows_ok, CLS_b, scn,
                LB_row, AMP_row, MASK_row, smn, qk_scale, O, HS, LSE, MASS, b, h_row, i_row, sob, som, soh,
                shs_b, shs_h, M, H, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, LOAD_CLS: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr, GROUP: tl.constexpr, DOT_FP32: tl.constexpr,
                HAS_HS: tl.constexpr, WANT_LSE: tl.constexpr, WANT_MASS: tl.constexpr):
    """The flash loop over every key of the tile, then the epilogue."""
    acc, l_i, m_i, mass, _s, _vs, _vns, _special, _n = _flash_loop(
        q, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok, qpos, is_last, rows_ok, CLS_b, scn, LB_row,
        AMP_row, MASK_row, smn, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, HAS_MASK, LOAD_CLS, HAS_BIAS,
        HAS_AMP, GROUP, DOT_FP32, False, WANT_MASS, False, 1)
    _epilogue(acc, l_i, m_i, mass, O, HS, LSE, MASS, b, h_row, i_row, rows_ok, offs_d, d_ok, sob, som, soh,
              shs_b, shs_h, M, H, HAS_HS, WANT_LSE, WANT_MASS)


@triton.jit
def _flash_loop(q, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok, qpos, is_last, rows_ok, CLS_b, scn,
                LB_row, AMP_row, MASK_row, smn, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                LOAD_CLS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr, GROUP: tl.constexpr,
                DOT_FP32: tl.constexpr, VAR_MASS: tl.constexpr, WANT_MASS: tl.constexpr,
                LIST_SPECIAL: tl.constexpr, MAX_BLOCKS: tl.constexpr):
    """Keys below ``mid`` unmasked, then the masked remainder up to ``hi``, from fresh accumulators."""
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    mass = tl.zeros([BLOCK_M, 16], dtype=tl.float32)
    special = tl.zeros([MAX_BLOCKS], dtype=tl.int32)
    acc, l_i, m_i, mass, S, Vs, Vns, special, n_special = _attend(
        acc, zero, m_i, mass, zero, zero, zero, special, tl.full([], 0, dtype=tl.int32), q, 0, mid, K_blk, V_blk,
        skn, svn, N, offs_n, offs_d, d_ok, qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn,
        qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, False, False, HAS_MASK, LOAD_CLS, HAS_BIAS, HAS_AMP, GROUP, DOT_FP32,
        VAR_MASS, WANT_MASS, LIST_SPECIAL, MAX_BLOCKS)
    return _attend(
        acc, l_i, m_i, mass, S, Vs, Vns, special, n_special, q, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d,
        d_ok, qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, HEAD_DIM, BLOCK_D,
        BLOCK_N, True, CAUSAL, HAS_MASK, LOAD_CLS, HAS_BIAS, HAS_AMP, GROUP, DOT_FP32, VAR_MASS, WANT_MASS,
        LIST_SPECIAL, MAX_BLOCKS)


@triton.jit
def _var_tile(q, eligible, p_var, var_rho, var_min_mass, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok,
              qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, O, HS, LSE, MASS, b,
              h_row, i_row, sob, som, soh, shs_b, shs_h, M, H, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
              HAS_BIAS: tl.constexpr, HAS_AMP: tl.constexpr, GROUP: tl.constexpr, DOT_FP32: tl.constexpr,
              HAS_HS: tl.constexpr, WANT_LSE: tl.constexpr, WANT_MASS: tl.constexpr, FIXUP_PREFETCH: tl.constexpr,
              FIXUP_LIST: tl.constexpr, MAX_BLOCKS: tl.constexpr):
    """The flash loop with VAR's masses, the VAR decision per row, then a fix-up over the few special key blocks.

    With weights ``w_s`` (sink keys), ``w_v`` (visual non-sink keys) and 1 (the rest), the re-weighted output is
    ``w_v * A + (w_s - w_v) * A_sink + (1 - w_v) * A_rest`` where ``A`` is the plain accumulator. Only the sink
    and non-visual keys need a second look, and in a prompt they are a handful of blocks (BOS, the text around the
    image, the few visual sinks); blocks inside the image cost one class load. Tiles where no row is selected skip
    the fix-up altogether.
    """
    acc, l_i, m_i, mass, S, Vs, Vns, special, n_special = _flash_loop(
        q, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok, qpos, is_last, rows_ok, CLS_b, scn, LB_row,
        AMP_row, MASK_row, smn, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, HAS_MASK, True, HAS_BIAS,
        HAS_AMP, GROUP, DOT_FP32, True, WANT_MASS, FIXUP_LIST, MAX_BLOCKS)
    w_sink, w_vis = var_weights(l_i, S, Vs, Vns, eligible, p_var, var_rho, var_min_mass)
    if tl.sum((w_vis != 1.0).to(tl.int32) + (w_sink != 1.0).to(tl.int32), 0) > 0:
        m_use = tl.where(m_i == float("-inf"), 0.0, m_i)
        acc = acc * w_vis[:, None]
        c_sink = w_sink - w_vis
        c_rest = 1.0 - w_vis
        if FIXUP_LIST:
            acc = _var_fixup_listed(acc, m_use, c_sink, c_rest, special, n_special, q, K_blk, V_blk, skn, svn, N,
                                    offs_n, offs_d, d_ok, qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row,
                                    MASK_row, smn, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, HAS_MASK, HAS_BIAS,
                                    HAS_AMP, GROUP, DOT_FP32, MAX_BLOCKS)
        else:
            acc = _var_fixup(acc, m_use, c_sink, c_rest, q, 0, mid, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok,
                             qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, HEAD_DIM,
                             BLOCK_D, BLOCK_N, False, False, HAS_MASK, HAS_BIAS, HAS_AMP, GROUP, DOT_FP32,
                             FIXUP_PREFETCH)
            acc = _var_fixup(acc, m_use, c_sink, c_rest, q, mid, hi, K_blk, V_blk, skn, svn, N, offs_n, offs_d, d_ok,
                             qpos, is_last, rows_ok, CLS_b, scn, LB_row, AMP_row, MASK_row, smn, qk_scale, HEAD_DIM,
                             BLOCK_D, BLOCK_N, True, CAUSAL, HAS_MASK, HAS_BIAS, HAS_AMP, GROUP, DOT_FP32,
                             FIXUP_PREFETCH)
    _epilogue(acc, l_i, m_i, mass, O, HS, LSE, MASS, b, h_row, i_row, rows_ok, offs_d, d_ok, sob, som, soh,
              shs_b, shs_h, M, H, HAS_HS, WANT_LSE, WANT_MASS)


@triton.jit
def _epilogue(acc, l_i, m_i, mass, O, HS, LSE, MASS, b, h_row, i_row, rows_ok, offs_d, d_ok, sob, som, soh,
              shs_b, shs_h, M, H, HAS_HS: tl.constexpr, WANT_LSE: tl.constexpr, WANT_MASS: tl.constexpr):
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    if HAS_HS:
        out = out * tl.load(HS + b * shs_b + h_row * shs_h)[:, None]
    tl.store(O + b * sob + i_row[:, None] * som + h_row[:, None] * soh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=rows_ok[:, None] & d_ok[None, :])
    stat_row = (b * H + h_row) * M + i_row
    if WANT_LSE:
        lse = tl.where(l_i > 0, (m_i + tl.log2(l_safe)) * LN2, float("-inf"))
        tl.store(LSE + stat_row, lse, mask=rows_ok)
    if WANT_MASS:
        c = tl.arange(0, 16)
        tl.store(MASS + stat_row[:, None] * 16 + c[None, :], mass / l_safe[:, None], mask=rows_ok[:, None])
