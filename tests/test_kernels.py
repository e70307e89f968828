"""The Triton kernels against an fp64 run of the reference, and the reference against independent formulas.

The Triton side runs in the interpreter on the CPU, so shapes are small but odd (37, 70, 5, 1) and blocks are 16
wide: several query tiles, key blocks and decode splits are still exercised. Every buffer the wrapper allocates is
handed out NaN-filled, so an element the kernels forget to write fails the comparison.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import

import math
import zlib

import pytest
import torch

from vlmfix.kernels import reference
from vlmfix.kernels.classes import LOCAL, SINK, SUMMARY, VISUAL
from vlmfix.kernels.reference import ReweightParams

ta = pytest.importorskip("vlmfix.kernels.triton_attention")
if not ta.INTERPRET:  # imported earlier without the interpreter: its kernels would need CUDA tensors
    pytest.skip("vlmfix.kernels.triton_attention was imported before TRITON_INTERPRET=1", allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
SHAPES = [(37, 37), (5, 70), (1, 70)]  # (queries, keys): prefill, chunked prefill, decode


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    def nan_empty(*shape, dtype=None, device=None, **kw):
        return torch.full(*shape, float("nan"), dtype=dtype, device=device) if len(shape) == 1 and isinstance(
            shape[0], (tuple, list)) else torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(ta, "_empty", nan_empty)
    monkeypatch.setattr(ta, "_workspace", {})
    monkeypatch.setattr(ta, "_split_cache", {})
    monkeypatch.setattr(ta, "_counters", {})
    monkeypatch.setattr(ta, "_decode_recipes", {})
    yield


def rel(a, b):
    a, b = a.double(), b.double()
    assert not torch.isnan(a).any(), "NaN in kernel output"
    fin = torch.isfinite(b)
    assert torch.equal(fin, torch.isfinite(a)), "non-finite pattern differs"
    a, b = a[fin], b[fin]
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def layout(n):
    """Key classes of a miniature prompt: BOS sink, text, image with a few sink / local / summary tokens, text."""
    cls = torch.zeros(n, dtype=torch.int64)
    cls[0] = SINK
    start, end = max(2, n // 8), n - max(4, n // 4)
    cls[start:end] = VISUAL
    for j in range(start + 2, end, 7):
        cls[j] |= SINK
    for j in range(start + 1, end, 5):
        cls[j] |= LOCAL
    for j in range(start + 3, end, 11):
        cls[j] |= SUMMARY
    return cls


def inputs(b, hq, hkv, m, n, d, dtype, gen):
    q = torch.randn(b, hq, m, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, n, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, n, d, generator=gen).to(dtype)
    # Sinks attract attention the way massive-activation tokens do, so VAR has mass to move.
    cls = layout(n)
    k[:, :, (cls & SINK) != 0] = (k[:, :, (cls & SINK) != 0].float() * 2).to(dtype)
    return q, k, v, cls.expand(b, n).contiguous()


def method_params(kind, b, h, cls, gen, m, n, q, k, v, scale, mask):
    p = ReweightParams(key_class=cls)
    if kind in ("log_bias", "all"):
        lb = torch.randn(b, h, 16, generator=gen) * 0.5
        lb[:, 0, LOCAL] = float("-inf")
        lb[:, 0, VISUAL | LOCAL] = float("-inf")
        p.log_bias = lb
    if kind in ("amp", "all"):
        p.amp = torch.rand(b, h, 16, generator=gen)
    if kind in ("head_scale", "all"):
        p.head_scale = torch.rand(b, h, generator=gen) + 0.5
    if kind in ("var", "all"):
        p.var_p = torch.rand(b, h, generator=gen) * 0.5 + 0.3
        p.var_p[:, -1] = 0.0
        p.var_rho = 0.5
        p.var_min_mass = split_threshold(q, k, v, scale, mask, p)
    return p


def split_threshold(q, k, v, scale, mask, p):
    """A var_min_mass that leaves some eligible rows image-centric and some not, far from any row's mass."""
    probe = ReweightParams(key_class=p.key_class, log_bias=p.log_bias, amp=p.amp)
    _, st = reference.attention(q.double(), k.double(), v.double(), scale=scale, mask=mask, params=probe,
                                want=("class_mass",))
    mass = st["class_mass"]
    c = torch.arange(16)
    vis = mass[..., (c & VISUAL) != 0].sum(-1)
    n, m = p.key_class.shape[1], q.shape[2]
    text_q = ((p.key_class[:, n - m:] & VISUAL) == 0)[:, None, :].expand_as(vis)
    vals = torch.sort(vis[text_q & (vis > 0.01)].flatten()).values
    if len(vals) < 2:
        return 0.2
    gaps = vals[1:] - vals[:-1]
    i = int(torch.argmax(gaps[len(gaps) // 4: max(len(gaps) // 4 + 1, 3 * len(gaps) // 4)])) + len(gaps) // 4
    return float((vals[i] + vals[i + 1]) / 2)


def check(q, k, v, *, scale, mask=None, params=None, want=("lse", "class_mass", "last_row_probs")):
    tol = TOL[q.dtype]
    out, st = ta.attention(q, k, v, scale=scale, mask=mask, params=params, want=want)
    p64 = None
    if params is not None:
        p64 = ReweightParams(**{f: getattr(params, f) for f in params.__dataclass_fields__})
    ref, rst = reference.attention(q.double(), k.double(), v.double(), scale=scale, mask=mask, params=p64,
                                   want=want)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert rel(out, ref) <= tol, rel(out, ref)
    for name in want:
        assert st[name].shape == rst[name].shape, name
        err = rel(st[name], rst[name])
        assert err <= max(tol, 1e-5), (name, err)
    return out, st


def both_var_branches(q, k, v, scale, mask, params):
    probe = ReweightParams(key_class=params.key_class, log_bias=params.log_bias, amp=params.amp)
    _, st = reference.attention(q.double(), k.double(), v.double(), scale=scale, mask=mask, params=probe,
                                want=("class_mass",))
    n, m = params.key_class.shape[1], q.shape[2]
    c = torch.arange(16)
    mass = st["class_mass"]
    vis = mass[..., (c & VISUAL) != 0].sum(-1)
    vns = mass[..., ((c & VISUAL) != 0) & ((c & SINK) == 0)].sum(-1)
    text_q = ((params.key_class[:, n - m:] & VISUAL) == 0)[:, None, :]
    on = (params.var_p > 0)[:, :, None] & text_q
    sel = on & (vis >= params.var_min_mass) & (vns > 0) & (vns >= params.var_rho * vis)
    return bool(sel.any()), bool((on & ~sel).any())


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("hq,hkv", [(4, 2), (2, 2)])
def test_plain_fp32(m, n, hq, hkv):
    gen = torch.Generator().manual_seed(m * 100 + n + hkv)
    q, k, v, _ = inputs(2, hq, hkv, m, n, 64, torch.float32, gen)
    check(q, k, v, scale=0.125, want=("lse",))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n", [(37, 37), (1, 70)])
def test_half_precision(dtype, m, n):
    gen = torch.Generator().manual_seed(7 + m)
    q, k, v, cls = inputs(2, 4, 2, m, n, 64, dtype, gen)
    params = method_params("all", 2, 4, cls, gen, m, n, q, k, v, 0.125, None)
    check(q, k, v, scale=0.125, params=params)


@pytest.mark.parametrize("d,m,n", [(80, 37, 37), (96, 1, 70), (128, 5, 70)])
def test_head_dims(d, m, n):
    gen = torch.Generator().manual_seed(d)
    q, k, v, cls = inputs(1, 4, 2, m, n, d, torch.float32, gen)
    check(q, k, v, scale=d ** -0.5, params=method_params("all", 1, 4, cls, gen, m, n, q, k, v, d ** -0.5, None))


def left_padding(b, m, n, pads):
    q_pos = torch.arange(n - m, n)[:, None]
    k_pos = torch.arange(n)[None, :]
    causal = k_pos <= q_pos
    mask = torch.zeros(b, 1, m, n, dtype=torch.bool)
    for i, pad in enumerate(pads):
        mask[i, 0] = causal & (k_pos >= pad)
    return mask


@pytest.mark.parametrize("m,n", SHAPES)
def test_left_padding(m, n):
    """Batch row 1 is left-padded; in prefill its padded query rows see no key at all and must come out zero."""
    gen = torch.Generator().manual_seed(11 + m)
    q, k, v, cls = inputs(2, 4, 2, m, n, 64, torch.float32, gen)
    mask = left_padding(2, m, n, [0, 9])
    out, st = check(q, k, v, scale=0.125, mask=mask)
    if m == n:
        assert torch.all(out[1, :9] == 0) and torch.all(torch.isneginf(st["lse"][1, :, :9]))


@pytest.mark.parametrize("kind", ["log_bias", "amp", "var", "head_scale", "all"])
@pytest.mark.parametrize("m,n", SHAPES)
def test_methods(kind, m, n):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{kind}-{m}-{n}".encode()) % 1000)
    q, k, v, cls = inputs(2, 4, 2, m, n, 64, torch.float32, gen)
    mask = left_padding(2, m, n, [0, 3]) if kind == "all" else None
    params = method_params(kind, 2, 4, cls, gen, m, n, q, k, v, 0.125, mask)
    if kind == "var" and m > 1:
        assert both_var_branches(q, k, v, 0.125, mask, params) == (True, True)
    check(q, k, v, scale=0.125, mask=mask, params=params)


def test_var_decode_both_branches_across_batch():
    """Decode: one batch row image-centric, the other not (its visual keys are pushed down by log_bias)."""
    gen = torch.Generator().manual_seed(5)
    q, k, v, cls = inputs(2, 4, 2, 1, 70, 64, torch.float32, gen)
    lb = torch.zeros(2, 4, 16)
    lb[1, :, VISUAL] = -6.0
    params = ReweightParams(key_class=cls, log_bias=lb, var_p=torch.full((2, 4), 0.6), var_min_mass=0.2)
    assert both_var_branches(q, k, v, 0.125, None, params) == (True, True)
    check(q, k, v, scale=0.125, params=params)


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("splits", ["one", "many", "many-separate-combine", "capped"])
def test_decode_split_paths(monkeypatch, splits, prefetch):
    monkeypatch.setattr(ta, "DECODE_PREFETCH_CLS", prefetch)
    cpu = torch.device("cpu")
    if splits == "one":
        monkeypatch.setitem(ta.DECODE_SPLIT, "min_keys", 10 ** 9)
    if splits == "capped":  # the merge unrolls the splits: never more than max_splits of them
        assert ta.decode_splits(70, 4, 16, cpu)[0] == 3
        monkeypatch.setitem(ta.DECODE_SPLIT, "max_splits", 2)
        ta._split_cache.clear()
        assert ta.decode_splits(70, 4, 16, cpu) == (2, 48)
    monkeypatch.setattr(ta, "FUSED_COMBINE", splits != "many-separate-combine")
    assert (ta.decode_splits(70, 4, 16, cpu)[0] > 1) == (splits != "one")
    gen = torch.Generator().manual_seed(3)
    q, k, v, cls = inputs(2, 8, 2, 1, 70, 64, torch.float32, gen)
    params = method_params("all", 2, 8, cls, gen, 1, 70, q, k, v, 0.125, None)
    check(q, k, v, scale=0.125, params=params)
    # The fused merge hands its arrival counters back at zero: a second launch (other inputs) must be exact too.
    check(q.flip(1), k, v.flip(2), scale=0.125, params=params)
    for counters in ta._counters.values():
        assert int(counters.abs().sum()) == 0


@pytest.mark.parametrize("method", ["var", "all"])
def test_decode_long_splits_take_their_own_configuration(monkeypatch, method):
    """Splits of at least ``long_keys`` keys launch with the ``decode_long`` blocks; shorter ones keep the default."""
    monkeypatch.setitem(ta.DECODE_SPLIT, "busy_long_keys", 48)
    cpu = torch.device("cpu")
    short = ta.decode_plan(70, 16, "fp32", cpu)  # 16 programs: batch 2 x 8 kv heads
    long_ = ta.decode_plan(300, 16, "fp32", cpu)
    assert short[0]["BLOCK_N"] == ta.CONFIGS[("decode", "fp32")]["BLOCK_N"] and short[3] < 48
    assert long_[0]["BLOCK_N"] == ta.CONFIGS[("decode_long", "fp32")]["BLOCK_N"] and long_[2] > 1
    assert long_[3] >= 48 and long_[3] % long_[0]["BLOCK_N"] == 0
    gen = torch.Generator().manual_seed(23)
    q, k, v, cls = inputs(2, 8, 8, 1, 300, 64, torch.float32, gen)
    params = method_params(method, 2, 8, cls, gen, 1, 300, q, k, v, 0.125, None)
    check(q, k, v, scale=0.125, params=params)


def set_fixup(monkeypatch, fixup):
    """The VAR prefill fix-up: scanning every key block ("scan", "prefetch") or the listed special blocks ("list")."""
    monkeypatch.setattr(ta, "VAR_FIXUP_PREFETCH", fixup == "prefetch")
    monkeypatch.setattr(ta, "VAR_FIXUP_LIST", fixup == "list")


@pytest.mark.parametrize("fixup", ["scan", "prefetch", "list"])
def test_var_prefill_fixup_skips_plain_image_blocks(monkeypatch, fixup):
    """One visual sink in a long image: most key blocks hold neither sinks nor text, so the VAR tile's fix-up
    skips them, and the result must still be the reference's; and with no image-centric row the fix-up is skipped
    entirely (output equal to plain attention)."""
    set_fixup(monkeypatch, fixup)
    gen = torch.Generator().manual_seed(17)
    n = 90
    q, k, v, _ = inputs(1, 4, 2, n, n, 64, torch.float32, gen)
    cls = torch.zeros(n, dtype=torch.int64)
    cls[0] = SINK
    cls[6:70] = VISUAL
    cls[40] |= SINK
    k[:, :, 40] *= 3
    cls = cls.expand(1, n).contiguous()
    params = ReweightParams(key_class=cls, var_p=torch.full((1, 4), 0.6), var_rho=0.5, var_min_mass=0.2)
    assert both_var_branches(q, k, v, 0.125, None, params)[0]
    out, _ = check(q, k, v, scale=0.125, params=params)
    plain, _ = ta.attention(q, k, v, scale=0.125)
    assert (out - plain).abs().max() > 1e-3  # VAR really moved mass
    params.var_min_mass = 2.0  # no row can be image-centric
    out, _ = check(q, k, v, scale=0.125, params=params)
    torch.testing.assert_close(out, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("waves,short", [(2, False), (4, True)])
def test_short_forward_launches_take_their_own_configuration(monkeypatch, waves, short):
    """A forward grid under ``FWD_SHORT_WAVES`` waves of the regular configuration launches the short one (here
    twice the regular tile), and the result is the reference's either way: VAR, every effect, GQA."""
    monkeypatch.setattr(ta, "_num_sms", lambda device: 4)
    configs = {key: dict(cfg) for key, cfg in ta.CONFIGS.items()}
    regular = configs[("fwd", "fp32")]
    configs[("fwd_short", "fp32")] = dict(regular, BLOCK_M=2 * regular["BLOCK_M"], BLOCK_N=2 * regular["BLOCK_N"])
    launched = []
    real_launch = ta._fwd_launch

    def spy(grid, args, constexprs, options):
        launched.append((grid, constexprs["BLOCK_M"], constexprs["BLOCK_N"]))
        return real_launch(grid, args, constexprs, options)

    monkeypatch.setattr(ta, "_fwd_launch", spy)
    gen = torch.Generator().manual_seed(23)
    m = n = 37  # 3 regular tiles x 4 heads = 12 programs: under 4 waves of 4, not under 2
    q, k, v, cls = inputs(1, 4, 2, m, n, 64, torch.float32, gen)
    params = method_params("all", 1, 4, cls, gen, m, n, q, k, v, 0.125, None)
    with ta.launch_choices(CONFIGS=configs, FWD_SHORT_WAVES=waves):
        check(q, k, v, scale=0.125, params=params)
    cfg = configs[("fwd_short" if short else "fwd", "fp32")]
    assert launched and all(block_m == cfg["BLOCK_M"] and block_n == cfg["BLOCK_N"] and grid[0] == -(-m // block_m)
                            for grid, block_m, block_n in launched), launched


def test_mqa_and_per_head_mask():
    gen = torch.Generator().manual_seed(9)
    q, k, v, cls = inputs(1, 4, 1, 5, 40, 64, torch.float32, gen)
    mask = torch.rand(1, 4, 5, 40, generator=gen) > 0.3
    check(q, k, v, scale=0.125, mask=mask, params=method_params("all", 1, 4, cls, gen, 5, 40, q, k, v, 0.125,
                                                                mask))


def test_identity_params_and_no_classes():
    gen = torch.Generator().manual_seed(4)
    q, k, v, _ = inputs(1, 2, 2, 37, 37, 64, torch.float32, gen)
    check(q, k, v, scale=0.125, params=ReweightParams(), want=("class_mass", "lse"))
    check(q, k, v, scale=0.125, params=ReweightParams(head_scale=torch.rand(1, 2, generator=gen)))


def test_rejects_bad_inputs():
    q = torch.randn(1, 3, 4, 16)
    k = torch.randn(1, 2, 4, 16)
    with pytest.raises(ValueError):
        ta.attention(q, k, k, scale=1.0)
    with pytest.raises(ValueError):
        ta.attention(torch.randn(1, 2, 4, 16), k, k, scale=1.0, want=("nope",))
    with pytest.raises(TypeError):
        ta.attention(torch.randn(1, 2, 4, 16), k, k, scale=1.0, mask=torch.ones(1, 1, 4, 4))


# --- the reference against formulas written independently of it -----------------------------------------------


def _probs(q, k, scale, lb=None, cls=None):
    s = torch.einsum("bhmd,bhnd->bhmn", q, k) * scale
    m, n = q.shape[2], k.shape[2]
    s = s.masked_fill(torch.arange(n)[None, :] > torch.arange(n - m, n)[:, None], float("-inf"))
    if lb is not None:
        s = s + lb[:, :, cls[0]][:, :, None, :]
    return torch.softmax(s, -1)


def test_reference_var_moves_exactly_p_of_sink_mass():
    gen = torch.Generator().manual_seed(1)
    b, h, n, d = 1, 3, 40, 16
    cls = layout(n)[None]
    q = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64).expand(b, h, n, n).contiguous()  # values = one-hot: out == probs
    var_p = torch.tensor([[0.5, 0.0, 0.8]], dtype=torch.float64)
    out, _ = reference.attention(q, k, eye, scale=0.25, params=ReweightParams(key_class=cls, var_p=var_p,
                                                                               var_rho=0.3, var_min_mass=0.1))
    after = out.transpose(1, 2)  # (b, h, m, n) post-VAR probabilities
    before = _probs(q, k, 0.25)
    torch.testing.assert_close(after.sum(-1), torch.ones(b, h, n, dtype=torch.float64))
    sink, vis = (cls[0] & SINK) != 0, (cls[0] & VISUAL) != 0
    vns = vis & ~sink
    moved_any = False
    for hh in range(h):
        for i in range(n):
            pb, pa = before[0, hh, i], after[0, hh, i]
            S, V, Vns = pb[sink].sum(), pb[vis].sum(), pb[vns].sum()
            image_centric = (var_p[0, hh] > 0 and not vis[i] and V >= 0.1 and Vns > 0 and Vns / V >= 0.3)
            if not image_centric:
                torch.testing.assert_close(pa, pb)
                continue
            moved_any = True
            p = var_p[0, hh]
            torch.testing.assert_close(pa[sink].sum(), (1 - p) * S)
            torch.testing.assert_close(pa[vns].sum(), Vns + p * S)
            torch.testing.assert_close(pa[~sink & ~vns], pb[~sink & ~vns])
            torch.testing.assert_close(pa[vns] / pb[vns], torch.full_like(pb[vns], float(1 + p * S / Vns)))
    assert moved_any


def test_reference_paint_touches_last_row_only():
    gen = torch.Generator().manual_seed(2)
    b, h, m, n, d = 1, 2, 6, 30, 16
    cls = layout(n)[None]
    q = torch.randn(b, h, m, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64).expand(b, h, n, n).contiguous()
    amp = torch.zeros(b, h, 16, dtype=torch.float64)
    amp[:, :, VISUAL] = 0.7
    out, _ = reference.attention(q, k, eye, scale=0.3, params=ReweightParams(key_class=cls, amp=amp))
    probs = out.transpose(1, 2)
    plain = _probs(q, k, 0.3)
    torch.testing.assert_close(probs[:, :, :-1], plain[:, :, :-1])
    s = torch.einsum("bhd,bhnd->bhn", q[:, :, -1], k) * 0.3
    s = s + amp[:, :, cls[0]] * s.abs()
    torch.testing.assert_close(probs[:, :, -1], torch.softmax(s, -1))
    assert not torch.allclose(probs[:, :, -1], plain[:, :, -1])


def test_reference_log_bias_is_renormalised_multiplicative_weight():
    gen = torch.Generator().manual_seed(3)
    b, h, n, d = 1, 2, 25, 16
    cls = layout(n)[None]
    q = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64).expand(b, h, n, n).contiguous()
    weight = torch.rand(b, h, 16, generator=gen, dtype=torch.float64) + 0.1
    weight[:, :, LOCAL | VISUAL] = 0.0  # log 0 = -inf removes the class
    out, _ = reference.attention(q, k, eye, scale=0.3, params=ReweightParams(key_class=cls, log_bias=weight.log()))
    plain = _probs(q, k, 0.3)
    w = weight[:, :, cls[0]][:, :, None, :]
    expect = plain * w / (plain * w).sum(-1, keepdim=True)
    torch.testing.assert_close(out.transpose(1, 2), expect)
    assert math.isclose(float(out.transpose(1, 2)[..., (cls[0] == (LOCAL | VISUAL))].abs().sum()), 0.0)


@pytest.mark.parametrize("mode", ["pair", "redo", "one", "one-fixup-prefetch", "one-fixup-list", "pair-fixup-list"])
def test_var_launch_modes(monkeypatch, mode):
    """Every way of sharing tiles between the plain and the VAR path gives the same result."""
    monkeypatch.setattr(ta, "VAR_LAUNCH", mode.split("-")[0])
    set_fixup(monkeypatch, mode.split("-")[-1] if "fixup" in mode else "scan")
    gen = torch.Generator().manual_seed(21)
    q, k, v, cls = inputs(1, 4, 2, 37, 37, 64, torch.float32, gen)
    params = method_params("var", 1, 4, cls, gen, 37, 37, q, k, v, 0.125, None)
    check(q, k, v, scale=0.125, params=params)


@pytest.mark.parametrize("splits", ["one", "many"])
def test_decode_wide_group(monkeypatch, splits):
    """Six query heads per kv head: VAR's three part rows per head no longer fit 16 rows (18 -> 32)."""
    if splits == "one":
        monkeypatch.setitem(ta.DECODE_SPLIT, "min_keys", 10 ** 9)
    assert (ta.decode_splits(50, 1, 16, torch.device("cpu"))[0] > 1) == (splits == "many")
    gen = torch.Generator().manual_seed(8)
    q, k, v, cls = inputs(1, 6, 1, 1, 50, 64, torch.float32, gen)
    check(q, k, v, scale=0.125, params=method_params("all", 1, 6, cls, gen, 1, 50, q, k, v, 0.125, None))


def test_public_entry_point_dispatches_to_triton():
    from vlmfix.kernels import attention

    gen = torch.Generator().manual_seed(12)
    q, k, v, _ = inputs(1, 2, 1, 5, 20, 32, torch.float32, gen)
    out, _ = attention(q, k, v, scale=0.2, backend="triton")
    ref, _ = reference.attention(q.double(), k.double(), v.double(), scale=0.2)
    assert rel(out, ref) <= 1e-5


@pytest.mark.parametrize("m,n,start", [(37, 37, 30), (5, 70, 66), (1, 70, 69), (1, 70, 70)])
def test_amp_start_emphasises_rows_from_a_position(m, n, start):
    """Emphasis on every row at or after ``amp_start`` (a cache-free forward replaying decode steps)."""
    gen = torch.Generator().manual_seed(11)
    q, k, v, cls = inputs(1, 4, 2, m, n, 16, torch.float32, gen)
    params = ReweightParams(key_class=cls, amp=torch.rand(1, 4, 16, generator=gen) + 0.2, amp_start=start)
    out, _ = check(q, k, v, scale=0.25, params=params)
    plain, _ = reference.attention(q.double(), k.double(), v.double(), scale=0.25)
    changed = (out.double() - plain).abs().amax(dim=(0, 2, 3)) > 1e-6  # per query row
    rows = torch.arange(n - m, n) >= start
    assert torch.equal(changed, rows)


def test_launch_choices_are_restored_and_checked():
    """Sweeps and GPU checks change launch choices only inside the context, and only the ones that exist."""
    before_launch, before_split = ta.VAR_LAUNCH, dict(ta.DECODE_SPLIT)
    split = dict(before_split, min_keys=10 ** 9)
    with ta.launch_choices(VAR_LAUNCH="pair", DECODE_SPLIT=split):
        assert ta.VAR_LAUNCH == "pair" and ta.DECODE_SPLIT["min_keys"] == 10 ** 9
        assert ta.decode_splits(70, 4, 16, torch.device("cpu"))[0] == 1
    assert ta.VAR_LAUNCH == before_launch and ta.DECODE_SPLIT == before_split
    assert ta.decode_splits(70, 4, 16, torch.device("cpu"))[0] > 1  # the plan cached inside was dropped
    with pytest.raises(ValueError, match=r"DECODE_SPLIT override lacks \['max_splits'\]"):
        with ta.launch_choices(DECODE_SPLIT={k: v for k, v in before_split.items() if k != "max_splits"}):
            pass
    assert ta.DECODE_SPLIT == before_split
    with pytest.raises(ValueError, match="unknown launch choices"):
        with ta.launch_choices(BLOCK_SIZE=64):
            pass


def _sink_bits_case(gen, b, hq, hkv, m, n, dtype, first, hidden_size=48, channels=(3, 17), tau=6.0):
    """Inputs whose SINK bits live in a separate buffer (from column ``first``), plus one hidden row per batch row
    of which row 0 is a sink under (channels, tau) and row 1 is not, both far from the threshold."""
    q, k, v, cls = inputs(b, hq, hkv, m, n, 64, dtype, gen)
    bits = torch.zeros(b, first + n + 5, dtype=torch.int32)
    bits[:, first:first + n] = (cls & SINK).to(torch.int32)
    bits[:, first + n - 1] = SINK if m > 1 else 0  # decode: the kernel must decide this column itself
    plain = cls & ~SINK
    hidden = (torch.randn(b, hidden_size, generator=gen) * 0.1).to(dtype)
    hidden[0, channels[1]] = 3.0  # phi ~ 3 / sqrt(9 / 48) ~ 6.9 >= tau
    hidden[1, channels[0]] = -1.0
    hidden[1, 5] = 3.0  # a larger non-sink channel: phi ~ 1 / sqrt(10 / 48) ~ 2.2 < tau
    eps = 1e-6
    sb = reference.SinkBits(bits, first, hidden, torch.tensor(channels), hidden_size ** 0.5 / tau,
                            (hidden_size * eps) ** 0.5)
    x = hidden.double()
    phi = x[:, list(channels)].abs().amax(-1) / (x.pow(2).mean(-1) + eps).sqrt()
    assert phi[0] > tau * 1.05 and phi[1] < tau * 0.95, phi
    return q, k, v, plain, sb, phi >= tau


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", ["one", "many", "many-prefetch"])
@pytest.mark.parametrize("first,strict", [(0, False), (3, True)])
def test_decode_tests_the_new_key_and_records_its_sink_bit(monkeypatch, dtype, splits, first, strict):
    """A decode step with ``SinkBits.hidden``: the kernel decides the new key's SINK bit from the hidden state (the
    paper's phi >= tau), uses it, and writes it into the layer's buffer; everything else equals the reference run
    with the same bits OR-ed into the classes by hand."""
    monkeypatch.setattr(ta, "DECODE_PREFETCH_CLS", splits == "many-prefetch")
    if splits == "one":
        monkeypatch.setitem(ta.DECODE_SPLIT, "min_keys", 10 ** 9)
    gen = torch.Generator().manual_seed(21 + first)
    n = 70
    q, k, v, plain, sb, expect = _sink_bits_case(gen, 2, 4, 2, 1, n, dtype, first)
    sb.strict = strict
    k[:, :, n - 1] = (k[:, :, n - 1].float() * 3).to(dtype)  # the new key draws mass: its class matters
    params = ReweightParams(key_class=plain, var_p=torch.full((2, 4), 0.6), var_rho=0.3, var_min_mass=0.05,
                            sink_bits=sb)
    before = sb.bits.clone()
    out, _ = ta.attention(q, k, v, scale=0.125, params=params)
    col = first + n - 1
    assert torch.equal(sb.bits[:, col] == SINK, expect)
    assert torch.equal(torch.cat([sb.bits[:, :col], sb.bits[:, col + 1:]], 1),
                       torch.cat([before[:, :col], before[:, col + 1:]], 1))  # no other column touched
    full = plain | sb.bits[:, first:first + n]
    ref, _ = reference.attention(q.double(), k.double(), v.double(), scale=0.125,
                                 params=ReweightParams(key_class=full, var_p=params.var_p, var_rho=0.3,
                                                       var_min_mass=0.05))
    assert rel(out, ref) <= TOL[dtype]
    # the bit matters: with the new key's bit flipped the result differs
    flipped = full.clone()
    flipped[:, -1] ^= SINK
    other, _ = reference.attention(q.double(), k.double(), v.double(), scale=0.125,
                                   params=ReweightParams(key_class=flipped, var_p=params.var_p, var_rho=0.3,
                                                         var_min_mass=0.05))
    assert rel(other, ref) > 10 * TOL[dtype]
    # the reference backend does the same test and write
    bits2 = before.clone()
    ref2, _ = reference.attention(q.double(), k.double(), v.double(), scale=0.125,
                                  params=ReweightParams(key_class=plain, var_p=params.var_p, var_rho=0.3,
                                                        var_min_mass=0.05,
                                                        sink_bits=reference.SinkBits(bits2, first, sb.hidden,
                                                                                     sb.channels, sb.threshold,
                                                                                     sb.eps_norm, strict)))
    assert torch.equal(bits2, sb.bits)
    assert rel(ref2, ref) <= 1e-12


@pytest.mark.parametrize("m,n", SHAPES)
def test_sink_bits_without_test_equal_classes_ored_by_hand(m, n):
    """Bits alone (prefill, chunked prefill, decode; with statistics): the same as OR-ing them into the classes."""
    gen = torch.Generator().manual_seed(23)
    q, k, v, plain, sb, _ = _sink_bits_case(gen, 2, 4, 2, m, n, torch.float32, 2)
    sb.hidden = None
    before = sb.bits.clone()
    full = plain | sb.bits[:, 2:2 + n]
    lb = torch.randn(2, 4, 16, generator=gen) * 0.3
    kw = dict(log_bias=lb, var_p=torch.full((2, 4), 0.5), var_rho=0.3, var_min_mass=0.05)
    out, st = ta.attention(q, k, v, scale=0.125, params=ReweightParams(key_class=plain, sink_bits=sb, **kw),
                           want=("class_mass",) if m == 1 else ())
    ref, rst = reference.attention(q.double(), k.double(), v.double(), scale=0.125,
                                   params=ReweightParams(key_class=full, **kw), want=("class_mass",))
    assert rel(out, ref) <= 1e-5
    if m == 1:
        assert rel(st["class_mass"], rst["class_mass"]) <= 1e-5
    assert torch.equal(sb.bits, before)
    if m > 1:  # the new-key test exists for decode steps only
        sb.hidden = torch.ones(2, 48)
        with pytest.raises(ValueError, match="one query row"):
            ta.attention(q, k, v, scale=0.125, params=ReweightParams(key_class=plain, sink_bits=sb, **kw))


@pytest.mark.parametrize("fixup", ["prefetch", "list"])
@pytest.mark.parametrize("m,n", [(37, 37), (5, 70)])
def test_var_fixup_variants_with_padding_and_every_effect(monkeypatch, m, n, fixup):
    """The prefetching and the listed fix-up (``VAR_FIXUP_PREFETCH``, ``VAR_FIXUP_LIST``) under left padding, log
    bias, emphasis and head scale."""
    set_fixup(monkeypatch, fixup)
    gen = torch.Generator().manual_seed(31 + m)
    q, k, v, cls = inputs(2, 4, 2, m, n, 64, torch.float32, gen)
    mask = left_padding(2, m, n, [0, 3])
    params = method_params("all", 2, 4, cls, gen, m, n, q, k, v, 0.125, mask)
    check(q, k, v, scale=0.125, mask=mask, params=params)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("hidden", [False, True])
def test_sink_bits_too_short_for_the_keys_is_an_error_on_both_backends(backend, hidden):
    """A SINK-bit row without a column for every key is refused before anything is written or launched."""
    gen = torch.Generator().manual_seed(4)
    q, k, v, cls = inputs(1, 4, 2, 1, 40, 64, torch.float32, gen)
    bits = torch.zeros(1, 41, dtype=torch.int32)
    sb = reference.SinkBits(bits, 2, torch.randn(1, 96, generator=gen) if hidden else None,
                            torch.tensor([3, 7]) if hidden else None, 3.0, 0.1)
    params = ReweightParams(key_class=cls, var_p=torch.full((1, 4), 0.6), sink_bits=sb)
    fn = reference.attention if backend == "torch" else ta.attention
    with pytest.raises(ValueError, match="holds 41 columns; keys need columns up to 42"):
        fn(q, k, v, scale=0.125, params=params)
    assert int(bits.abs().sum()) == 0


# ----------------------------------------------------------------------------------------------------------------------
# decode recipes: a repeated decode signature replays its launch (``_recipes.py``)
# ----------------------------------------------------------------------------------------------------------------------
class RecordingLaunch:
    """A decode launcher that records every call and, like ``DirectLaunch``, hands out a "compiled kernel" for a
    signature it has launched: here a runner that records the addresses and the tail it is given."""

    enabled, compile_only = True, False

    def __init__(self):
        self.log = []

    def __call__(self, grid, args, constexprs, options):
        self.log.append(("full", grid, args, constexprs, options))

    def runner(self, compiled, grid, constexprs, device):
        def run(*flat):
            self.log.append(("direct", grid, flat))
        return run, tuple(constexprs.values()), None  # (a compiled kernel takes them in parameter order)


_CHANNELS = torch.tensor((3, 17))


def _decode_case(name, gen, dtype=torch.float32):
    """One decode call per kind of signature: (q, k, v, scale, mask, params), fresh tensors on every call."""
    b, hq, hkv, n = (1, 4, 4, 23) if name == "short-mha" else (2, 8, 2, 70)
    q, k, v, cls = inputs(b, hq, hkv, 1, n, 64, dtype, gen)
    mask = None
    if name == "padded":
        mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
        mask[0, :, :, :5] = False
    if name in ("plain", "short-mha"):
        return q, k, v, 0.125, None, None
    kind = {"padded": "all", "all": "all", "vhr": "head_scale", "dual": "amp"}.get(name, "var")
    params = method_params(kind, b, hq, cls, gen, 1, n, q, k, v, 0.125, mask)
    params.var_min_mass = 0.2  # (a constant of the method, as in a generate; method_params fits it to the data)
    if name == "dual":
        params.amp_start = n - 3
    if name == "broadcast":  # tables shared by the batch rows (stride 0)
        params.var_p = params.var_p[:1]
    if name in ("var-bits", "var-test"):
        _, _, _, plain, sb, _ = _sink_bits_case(gen, b, hq, hkv, 1, n, dtype, 3)
        sb.channels = _CHANNELS  # one sink test's channel list, as a layer's writer keeps it
        if name == "var-bits":
            sb.hidden = None
        params = ReweightParams(key_class=plain, var_p=params.var_p, var_rho=0.3, var_min_mass=0.05, sink_bits=sb)
    return q, k, v, 0.125, mask, params


CASES = ["plain", "short-mha", "padded", "all", "vhr", "dual", "var", "broadcast", "var-bits", "var-test"]


def _launch_of(log_entry, out):
    """A recorded launch with the output's address replaced by a marker: (grid, leading addresses, the rest)."""
    kind, grid, *rest = log_entry
    n_lead = len(reference_lead_roles())
    if kind == "full":
        args, constexprs, _ = rest
        flat = [a.data_ptr() for a in args[:n_lead]] + list(args[n_lead:]) + list(constexprs.values())
    else:
        flat = list(rest[0])
    out_addr = out.data_ptr()
    return grid, ["OUT" if i < n_lead and a == out_addr else a for i, a in enumerate(flat)]


def reference_lead_roles():
    from vlmfix.kernels._recipes import NATURAL_SLOTS
    return NATURAL_SLOTS


@pytest.mark.parametrize("splits", ["one", "many"])
def test_decode_replays_hand_the_launcher_exactly_the_full_paths_launch(monkeypatch, splits):
    """A replayed decode call launches with what the full path would compute for the same call: the same grid, every
    integer, float and constexpr, and each tensor argument's address taken from the right input. Every kind of
    signature (plain, MHA, padding mask, every effect, broadcast tables, VAR with SINK bits with and without the
    kernel's sink test) is first seen once, so a wrong match between signatures would replay another's launch."""
    if splits == "one":
        monkeypatch.setitem(ta.DECODE_SPLIT, "min_keys", 10 ** 9)
    rec = RecordingLaunch()
    monkeypatch.setattr(ta, "_decode_launch", rec)
    gen = torch.Generator().manual_seed(41)
    for name in CASES:  # first sight of each signature: the full path, which leaves a recipe
        q, k, v, scale, mask, params = _decode_case(name, gen)
        ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    assert [e[0] for e in rec.log] == ["full"] * len(CASES) and len(ta._decode_recipes) == len(CASES)
    for name in CASES:
        q, k, v, scale, mask, params = _decode_case(name, torch.Generator().manual_seed(7))
        rec.log.clear()
        out, _ = ta.attention(q, k, v, scale=scale, mask=mask, params=params)
        monkeypatch.setattr(ta, "DECODE_RECIPES", False)  # (launch_choices would also drop the recipes)
        full_out, _ = ta.attention(q, k, v, scale=scale, mask=mask, params=params)
        monkeypatch.setattr(ta, "DECODE_RECIPES", True)
        assert [e[0] for e in rec.log] == ["direct", "full"], name
        assert _launch_of(rec.log[0], out) == _launch_of(rec.log[1], full_out), name
        assert out.shape == full_out.shape and out.dtype == full_out.dtype


def test_decode_replays_are_exact_and_leave_the_full_path_when_they_cannot_replay(monkeypatch):
    """Through the interpreter (the launcher is Triton's own: a replay fills the recorded arguments with the call's
    tensors): second and third calls of a signature, on other data, equal the fp64 reference, and the kernel's sink
    test still writes its bit. A recipe holds none of its call's tensors (it would keep a decode step's cache alive).
    A misaligned input, another dtype of one table, and compile-only mode take the full path."""
    gen = torch.Generator().manual_seed(43)
    for round_ in range(3):
        q, k, v, scale, mask, params = _decode_case("var-test", gen)
        sb = params.sink_bits
        expect_bit = sb.bits.clone()
        out, _ = ta.attention(q, k, v, scale=scale, mask=mask, params=params)
        assert len(ta._decode_recipes) == 1
        col = sb.first + k.shape[2] - 1
        assert bool((sb.bits[:, col] == SINK)[0]) and not bool((sb.bits[:, col] == SINK)[1])
        expect_bit[:, col] = sb.bits[:, col]
        full = params.key_class | expect_bit[:, sb.first:sb.first + k.shape[2]]
        ref, _ = reference.attention(q.double(), k.double(), v.double(), scale=scale, params=ReweightParams(
            key_class=full, var_p=params.var_p, var_rho=params.var_rho, var_min_mass=params.var_min_mass))
        assert rel(out, ref) <= TOL[q.dtype], round_
    for name in ("all", "padded"):
        for _ in range(2):
            q, k, v, scale, mask, params = _decode_case(name, gen)
            check(q, k, v, scale=scale, mask=mask, params=params, want=())
    import gc
    import weakref

    ta._decode_recipes.clear()
    q, k, v, scale, mask, params = _decode_case("var-test", gen)  # a recipe keeps none of its call's tensors
    ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    assert len(ta._decode_recipes) == 1
    held = [weakref.ref(t) for t in (q, k, v, params.key_class, params.var_p, params.sink_bits.hidden)]
    del q, k, v, params
    gc.collect()
    assert [r() is None for r in held] == [True] * len(held)
    rec = RecordingLaunch()
    monkeypatch.setattr(ta, "_decode_launch", rec)
    ta._decode_recipes.clear()
    q, k, v, scale, mask, params = _decode_case("all", gen)
    ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    shifted = torch.empty(q.numel() + 1)[1:].view(q.shape)  # same shape and strides, 4 bytes off alignment
    shifted.copy_(q)
    ta.attention(shifted, k, v, scale=scale, mask=mask, params=params)
    params.log_bias = params.log_bias.double()  # converted by the full path: no replay, no recipe
    ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    params.log_bias = params.log_bias.float()
    rec.compile_only = True
    ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    rec.compile_only = False
    ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    assert [e[0] for e in rec.log] == ["full", "full", "full", "full", "full", "direct"]


def test_the_recipe_table_keeps_the_latest_signatures_and_forgets_the_oldest_first(monkeypatch):
    """A decode step's signature is new at every step (the key count grows), so the table must drop old recipes one at
    a time, oldest first, and never the ones of the step under way: a table that piles up recipes and then clears
    them feeds the collector's oldest generation (``benchmarks/gc_pressure.py``), and one that forgets the current
    step's recipes would send every layer down the full path."""
    monkeypatch.setattr(ta, "_MAX_RECIPES", 3)
    rec = RecordingLaunch()
    monkeypatch.setattr(ta, "_decode_launch", rec)
    gen = torch.Generator().manual_seed(47)

    def step(n):
        q, k, v, _ = inputs(1, 4, 2, 1, n, 64, torch.float32, gen)
        rec.log.clear()
        ta.attention(q, k, v, scale=0.125)
        return rec.log[0][0]

    assert [step(n) for n in (20, 21, 22)] == ["full"] * 3
    assert [step(n) for n in (20, 21, 22)] == ["direct"] * 3  # every recipe still there
    assert step(23) == "full" and len(ta._decode_recipes) == 3  # 20, the oldest, makes room
    assert [step(n) for n in (21, 22, 23)] == ["direct"] * 3
    assert step(20) == "full" and [step(n) for n in (22, 23, 20)] == ["direct"] * 3  # now 21 went


def _everything_case(gen):
    """A decode call with every input present: padding mask, every table, SINK bits with the kernel's sink test."""
    q, k, v, scale, mask, params = _decode_case("padded", gen)
    _, _, _, plain, sb, _ = _sink_bits_case(gen, 2, 8, 2, 1, 70, torch.float32, 3)
    sb.channels = _CHANNELS
    params.key_class, params.sink_bits, params.amp_start = plain, sb, 67
    return q, k, v, scale, mask, params


def _with(params, **fields):
    return ReweightParams(**{**{f: getattr(params, f) for f in params.__dataclass_fields__}, **fields})


def _sinks(sb, **fields):
    return reference.SinkBits(**{**{f: getattr(sb, f) for f in sb.__dataclass_fields__}, **fields})


# Each changes one thing a launch is derived from (a scalar, a stride, a shape, a dtype, an input's presence).
SIGNATURE_CHANGES = {
    "scale": lambda q, k, v, s, m, p: (q, k, v, 0.1, m, p),
    "rho": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, var_rho=0.4)),
    "min_mass": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, var_min_mass=0.3)),
    "amp_start": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, amp_start=68)),
    "amp_start_after_row": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, amp_start=70)),
    "first": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, sink_bits=_sinks(p.sink_bits, first=2))),
    "strict": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, sink_bits=_sinks(p.sink_bits, strict=True))),
    "threshold": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, sink_bits=_sinks(
        p.sink_bits, threshold=p.sink_bits.threshold * 0.9))),
    "eps_norm": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, sink_bits=_sinks(p.sink_bits, eps_norm=0.5))),
    "channels": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, sink_bits=_sinks(
        p.sink_bits, channels=torch.tensor((3, 17, 20))))),
    "no_hidden": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, sink_bits=_sinks(p.sink_bits, hidden=None))),
    "hidden_stride": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, sink_bits=_sinks(
        p.sink_bits, hidden=torch.cat([p.sink_bits.hidden, p.sink_bits.hidden], 1)[:, :48]))),
    "bits_width": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, sink_bits=_sinks(
        p.sink_bits, bits=torch.cat([p.sink_bits.bits, p.sink_bits.bits], 1)))),
    "fewer_keys": lambda q, k, v, s, m, p: (q, k[:, :, :66], v[:, :, :66], s, m[..., :66],
                                            _with(p, key_class=p.key_class[:, :66].contiguous())),
    "key_layout": lambda q, k, v, s, m, p: (q, k.transpose(1, 2).contiguous().transpose(1, 2), v, s, m, p),
    "value_layout": lambda q, k, v, s, m, p: (q, k, v.transpose(1, 2).contiguous().transpose(1, 2), s, m, p),
    "half": lambda q, k, v, s, m, p: (q.bfloat16(), k.bfloat16(), v.bfloat16(), s, m, p),
    "no_mask": lambda q, k, v, s, m, p: (q, k, v, s, None, p),
    "mask_per_head": lambda q, k, v, s, m, p: (q, k, v, s, m.expand(2, 8, 1, 70).contiguous(), p),
    "classes_broadcast": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, key_class=p.key_class[:1])),
    "no_log_bias": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, log_bias=None)),
    "log_bias_broadcast": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, log_bias=p.log_bias[:1])),
    "no_amp": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, amp=None)),
    "no_var": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, var_p=None)),
    "var_p_stride": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, var_p=p.var_p.t().contiguous().t())),
    "no_head_scale": lambda q, k, v, s, m, p: (q, k, v, s, m, _with(p, head_scale=None)),
    "no_params": lambda q, k, v, s, m, p: (q, k, v, s, m, None),
}


@pytest.mark.parametrize("change", sorted(SIGNATURE_CHANGES))
def test_a_decode_call_that_differs_in_one_respect_is_not_a_replay_of_the_other(monkeypatch, change):
    """With the recipe of a call that has every input present at hand, a call that differs from it in one scalar,
    stride, shape, dtype or input launches what the full path computes for it, never the other call's launch."""
    rec = RecordingLaunch()
    monkeypatch.setattr(ta, "_decode_launch", rec)
    gen = torch.Generator().manual_seed(47)
    base = _everything_case(gen)
    ta.attention(*base[:3], scale=base[3], mask=base[4], params=base[5])
    q, k, v, scale, mask, params = SIGNATURE_CHANGES[change](*_everything_case(gen))
    rec.log.clear()
    out, _ = ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    monkeypatch.setattr(ta, "DECODE_RECIPES", False)
    full_out, _ = ta.attention(q, k, v, scale=scale, mask=mask, params=params)
    assert [e[0] for e in rec.log] == ["full", "full"]  # a new signature: the full path, which leaves its recipe
    full_launch = _launch_of(rec.log[1], full_out)
    assert _launch_of(rec.log[0], out) == full_launch
    monkeypatch.setattr(ta, "DECODE_RECIPES", True)
    rec.log.clear()
    out, _ = ta.attention(q, k, v, scale=scale, mask=mask, params=params)  # now a replay of its own recipe
    assert [e[0] for e in rec.log] == ["direct"] and _launch_of(rec.log[0], out) == full_launch


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_the_sink_test_reads_a_decode_layers_input_as_it_comes(backend):
    """``SinkBits.hidden`` may be the decode layer's input as it comes, (B, 1, D): the same bit and output as (B, D)."""
    gen = torch.Generator().manual_seed(53)
    q, k, v, plain, sb, expect = _sink_bits_case(gen, 2, 4, 2, 1, 70, torch.float32, 3)
    run = ta.attention if backend == "triton" else reference.attention
    outs, bits = [], []
    for hidden in (sb.hidden, sb.hidden[:, None, :]):
        b = sb.bits.clone()
        b[:, 3 + 70 - 1] = -1
        params = ReweightParams(key_class=plain, var_p=torch.full((2, 4), 0.6), var_rho=0.3, var_min_mass=0.05,
                                sink_bits=reference.SinkBits(b, 3, hidden, sb.channels, sb.threshold, sb.eps_norm))
        outs.append(run(q, k, v, scale=0.125, params=params)[0])
        bits.append(b)
    assert torch.equal(bits[0], bits[1]) and torch.equal(bits[1][:, 3 + 70 - 1] == SINK, expect)
    assert torch.equal(outs[0], outs[1])
