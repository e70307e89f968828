"""``DirectLaunch``: Triton's own path for every new call signature, the cached compiled kernel for repeats.

Compiled kernels cannot run on this machine, so a stand-in kernel records how it was called; what is checked is the
caching rule (what must and must not select another compiled kernel) and the fallback.
"""

from types import SimpleNamespace

import pytest
import torch

from vlmfix.kernels._launch import DirectLaunch


class FakeCompiled:
    def __init__(self, log, fail=False):
        self.log, self.fail = log, fail

    def __getitem__(self, grid):
        def runner(*args, stream=None):
            grid[0], grid[1], grid[2]  # Triton's runner reads three grid entries
            if self.fail:
                raise TypeError("launcher expects other arguments")
            self.log.append(("direct", grid, args) if stream is None else ("direct", grid, args, stream))
        return runner


class FakeJit:
    """Runtime parameters X, n, scale; constexprs BLOCK, FLAG (in that order)."""

    __name__ = "fake"
    params = [SimpleNamespace(name=n, is_constexpr=c) for n, c in
              (("X", False), ("n", False), ("scale", False), ("BLOCK", True), ("FLAG", True))]

    def __init__(self, fail_direct=False):
        self.log = []
        self.compiled = 0
        self.fail_direct = fail_direct

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.log.append(("triton", grid, args, kw))
            self.compiled += 1
            return FakeCompiled(self.log, self.fail_direct)
        return run

    def warmup(self, *args, grid, **kw):
        self.log.append(("warmup", grid, args, kw))
        self.compiled += 1


def test_repeat_signatures_launch_directly_with_constexprs_in_parameter_order():
    fn = FakeJit()
    launch = DirectLaunch(fn, enabled=True)
    x = torch.zeros(64)
    launch((2, 1, 1), (x, 32, 0.5), {"FLAG": True, "BLOCK": 16}, {"num_warps": 4})
    launch((3, 1, 1), (x, 48, 0.25), {"FLAG": True, "BLOCK": 16}, {"num_warps": 4})  # 48: also a multiple of 16
    assert [e[0] for e in fn.log] == ["triton", "direct"]
    # the leading tensors reach the compiled launcher as addresses (no data_ptr call and driver check per pointer)
    assert fn.log[1] == ("direct", (3, 1, 1), (x.data_ptr(), 48, 0.25, 16, True))


class _OnAnotherDevice(torch.Tensor):
    """A tensor that reports another device: the key must tell it apart, since its address is not checked."""

    def get_device(self):
        return 1


@pytest.mark.parametrize("change", ["int_not_multiple_of_16", "int_one", "misaligned", "dtype", "device",
                                    "constexpr", "option"])
def test_anything_triton_specialises_on_selects_its_own_compiled_kernel(change):
    fn = FakeJit()
    launch = DirectLaunch(fn, enabled=True)
    x = torch.zeros(64)
    args, consts, opts = (x, 32, 0.5), {"BLOCK": 16, "FLAG": True}, {"num_warps": 4}
    launch((1, 1, 1), args, consts, opts)
    if change == "int_not_multiple_of_16":
        args = (x, 33, 0.5)
    elif change == "int_one":
        args = (x, 1, 0.5)
    elif change == "misaligned":
        args = (x[1:], 32, 0.5)
    elif change == "dtype":
        args = (x.double(), 32, 0.5)
    elif change == "device":
        args = (x.as_subclass(_OnAnotherDevice), 32, 0.5)
    elif change == "constexpr":
        consts = {"BLOCK": 32, "FLAG": True}
    else:
        opts = {"num_warps": 8}
    launch((1, 1, 1), args, consts, opts)
    assert [e[0] for e in fn.log] == ["triton", "triton"]


def test_a_non_tensor_where_the_first_call_had_a_tensor_takes_tritons_path_uncached():
    fn = FakeJit()
    launch = DirectLaunch(fn, enabled=True)
    x = torch.zeros(64)
    launch((1, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {})
    for _ in range(2):
        launch((1, 1, 1), (None, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {})
    launch((1, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {})
    assert [e[0] for e in fn.log] == ["triton", "triton", "triton", "direct"]


def test_a_failing_direct_launch_falls_back_to_triton_for_good():
    fn = FakeJit(fail_direct=True)
    launch = DirectLaunch(fn, enabled=True)
    x = torch.zeros(64)
    launch((1, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {})
    with pytest.warns(RuntimeWarning, match="launching fake directly failed"):
        launch((1, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {})
    launch((1, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {})
    assert [e[0] for e in fn.log] == ["triton", "triton", "triton"] and not launch.enabled
    assert "launcher expects other arguments" in launch.error


def test_disabled_and_misdeclared_kernels():
    fn = FakeJit()
    launch = DirectLaunch(fn, enabled=False)  # the interpreter
    x = torch.zeros(64)
    for _ in range(2):
        launch((1, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {})
    assert [e[0] for e in fn.log] == ["triton", "triton"]
    bad = FakeJit()
    bad.params = [SimpleNamespace(name="B", is_constexpr=True), SimpleNamespace(name="X", is_constexpr=False)]
    with pytest.raises(TypeError, match="constexpr parameters must come after"):
        DirectLaunch(bad, enabled=True)
    with pytest.raises(TypeError, match="takes 3 runtime arguments"):
        DirectLaunch(FakeJit(), enabled=True)((1, 1, 1), (x, 32), {"BLOCK": 16, "FLAG": False}, {})
    with pytest.raises(ValueError, match="three entries"):
        DirectLaunch(FakeJit(), enabled=True)((1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {})


def test_compile_only_compiles_what_a_launch_would_and_launches_nothing():
    """In compile-only mode a call hands Triton exactly the launch's arguments as a warm-up (same binding, so the same
    compiled kernel) and keeps no plan: the next real call still goes through Triton once, which finds it compiled."""
    fn = FakeJit()
    launch = DirectLaunch(fn, enabled=True)
    x = torch.zeros(64)
    call = ((2, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": True}, {"num_warps": 4})
    launch.compile_only = True
    launch(*call)
    launch.compile_only = False
    launch(*call)
    launch(*call)
    assert [e[0] for e in fn.log] == ["warmup", "triton", "direct"]
    assert fn.log[0][1:] == ((2, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": True, "num_warps": 4})
    assert fn.log[0][1:] == fn.log[1][1:]


def test_the_wrappers_compile_only_mode_is_scoped():
    from vlmfix.kernels import triton_attention as ta

    launches = (ta._decode_launch, ta._fwd_launch, ta._combine_launch, ta._last_row_launch)
    assert not any(launch.compile_only for launch in launches)
    with pytest.raises(RuntimeError, match="inside"):
        with ta.compile_only():
            # the interpreter has nothing to compile: its calls keep launching
            assert all(launch.compile_only == (not ta.INTERPRET) for launch in launches)
            raise RuntimeError("inside")
    assert not any(launch.compile_only for launch in launches)


def test_compile_ahead_runs_each_call_as_a_compile(monkeypatch):
    """``compile_ahead`` turns the wrapper's launches into compiles for the calls it is given (here with stand-in
    kernels, as if on a GPU) and leaves them launching afterwards."""
    from vlmfix.kernels import triton_attention as ta

    fns = FakeJit(), FakeJit()
    monkeypatch.setattr(ta, "INTERPRET", False)
    monkeypatch.setattr(ta, "_decode_launch", DirectLaunch(fns[0], enabled=True))
    monkeypatch.setattr(ta, "_fwd_launch", DirectLaunch(fns[1], enabled=True))
    x = torch.zeros(64)
    calls = [lambda n=n: ta._decode_launch((1, 1, 1), (x, n, 0.5), {"BLOCK": 16, "FLAG": False}, {})
             for n in (32, 33)] + [lambda: ta._fwd_launch((4, 1, 1), (x, 64, 0.5), {"BLOCK": 64, "FLAG": True}, {})]
    ta.compile_ahead(calls, workers=2)
    assert [(e[0], e[2][1]) for e in fns[0].log] == [("warmup", 32), ("warmup", 33)]
    assert [(e[0], e[2][1]) for e in fns[1].log] == [("warmup", 64)]
    calls[0]()
    assert fns[0].log[-1][0] == "triton" and not ta._decode_launch.compile_only and not ta._fwd_launch.compile_only


def _params_from_signature(fn):
    """A jitted kernel's (name, is_constexpr) list from its Python signature: under the interpreter the jitted
    function carries none."""
    import inspect

    py = getattr(fn, "fn", fn)
    return [SimpleNamespace(name=name, is_constexpr="constexpr" in str(p.annotation))
            for name, p in inspect.signature(py).parameters.items()]


@pytest.mark.parametrize("method", ["var", "all"])
def test_a_generate_reuses_each_compiled_decode_kernel(monkeypatch, method):
    """The decode calls of a patched generate select a compiled kernel by what Triton specialises on, which changes
    with the key count only now and then (its being a multiple of 16, the number of splits). A value that differs on
    every call (a fresh buffer's alignment, a stride that grows with each token) would send every layer and token
    through Triton's slow binding, which is about as much host time again as the rest of our per-layer path."""
    import families
    import vlmfix
    from vlmfix.kernels import reference
    from vlmfix.kernels import triton_attention as ta
    from vlmfix.kernels._tri_decode import decode_kernel
    from vlmfix.patches import session as session_mod

    jit = FakeJit()  # its compiled kernel launches nothing; jit.compiled counts the calls that took Triton's path
    jit.params = _params_from_signature(decode_kernel)
    launch = DirectLaunch(jit, enabled=True)
    variants = []

    def counted(grid, args, constexprs, options):
        variants.append(tuple(constexprs.values()))
        return launch(grid, args, constexprs, options)

    def attention(q, k, v, *, scale, mask=None, params=None, want=(), backend="auto"):
        if q.shape[2] == 1 and not want:  # the decode path up to the launch; the output from the reference
            ta.attention(q, k, v, scale=scale, mask=mask, params=params)
        return reference.attention(q, k, v, scale=scale, mask=mask, params=params, want=want)

    monkeypatch.setattr(ta, "_decode_launch", counted)
    monkeypatch.setattr(session_mod, "kernel_attention", attention)
    tiny = families.llava()
    inputs = tiny.inputs(pad=False)
    methods = [vlmfix.VAR(sink_dims=(3, 7), tau=1.5)]
    if method == "all":
        methods += [vlmfix.VHR(mode="fused"), vlmfix.DualStream()]
    with vlmfix.patched(tiny.model, *methods, backend="torch"), torch.no_grad():
        tiny.model.generate(**inputs, max_new_tokens=40, min_new_tokens=40, do_sample=False)
    calls = len(variants)
    assert calls >= 39 * 2, calls  # every decode step went through the launch, in every patched layer
    # Triton's path once per compiled kernel: at most two per constexpr variant (the key count a multiple of 16 or
    # not), and the variants themselves few (per kind of layer, the number of splits as the keys grow)
    n_variants = len(set(variants))
    assert jit.compiled <= 2 * n_variants <= 32, (jit.compiled, n_variants)
    assert calls >= 5 * jit.compiled, (calls, jit.compiled)


def test_every_launch_of_the_wrapper_matches_its_kernels_signature(monkeypatch):
    """Each of the wrapper's four launches, made as on a GPU (direct launches of stand-in kernels that carry the real
    kernels' parameter lists): as many runtime arguments as the kernel declares, exactly its constexprs, and the
    leading tensors as addresses. Under the interpreter these launches take Triton's path, which would not notice."""
    from vlmfix.kernels import reference
    from vlmfix.kernels import triton_attention as ta
    from vlmfix.kernels._tri_decode import combine_kernel, decode_kernel, last_row_kernel
    from vlmfix.kernels._tri_fwd import fwd_kernel

    jits = {}
    for name, kernel in (("_decode_launch", decode_kernel), ("_fwd_launch", fwd_kernel),
                         ("_combine_launch", combine_kernel), ("_last_row_launch", last_row_kernel)):
        jit = FakeJit()
        jit.params = _params_from_signature(kernel)
        jits[name] = jit
        launch = DirectLaunch(jit, enabled=True)

        def checked(grid, args, constexprs, options, launch=launch, jit=jit):
            names = {p.name for p in jit.params if p.is_constexpr}
            assert set(constexprs) == names, (jit.params, set(constexprs) ^ names)
            return launch(grid, args, constexprs, options)
        monkeypatch.setattr(ta, name, checked)
    monkeypatch.setattr(ta, "FUSED_COMBINE", False)  # the separate merge launch
    gen = torch.Generator().manual_seed(3)
    n = 200
    q1 = torch.randn(2, 8, 1, 64, generator=gen)
    q = torch.randn(2, 8, 6, 64, generator=gen)
    k, v = torch.randn(2, 4, n, 64, generator=gen), torch.randn(2, 4, n, 64, generator=gen)
    cls = torch.zeros(2, n, dtype=torch.int32)
    params = reference.ReweightParams(key_class=cls, var_p=torch.full((2, 8), 0.5), head_scale=torch.ones(2, 8))
    for _ in range(2):  # the second round launches directly
        ta.attention(q1, k, v, scale=0.125, params=params, want=("last_row_probs",))
        ta.attention(q, k, v, scale=0.125, params=params, want=("last_row_probs",))
    for name, jit in jits.items():
        kinds = [e[0] for e in jit.log]
        assert "triton" in kinds and "direct" in kinds, (name, kinds)
        for entry in jit.log:
            if entry[0] == "direct":
                lead = [a for a in entry[2] if isinstance(a, torch.Tensor)]
                assert not lead, (name, "tensors reached the compiled launcher")


def test_a_launch_hands_out_its_compiled_kernel_only_where_calls_launch_directly_from_now_on():
    """What a decode recipe binds (``runner``): the compiled kernel a launch of its own arguments returned, called
    with the leading tensors as addresses and the constexprs in parameter order, exactly as a direct launch calls it.
    Nothing where the launch only compiled, took Triton's path uncached, or the direct path was given up."""
    fn = FakeJit()
    launch = DirectLaunch(fn, enabled=True)
    x = torch.zeros(64)
    call = ((2, 1, 1), (x, 32, 0.5), {"FLAG": True, "BLOCK": 16}, {"num_warps": 4})
    first = launch(*call)
    assert isinstance(first, FakeCompiled) and launch(*call) is first  # the plan's kernel, first and direct call
    run, consts, stream = launch.runner(first, (2, 1, 1), call[2], x.get_device())
    assert consts == (16, True) and stream is None  # (a CPU tensor: no CUDA stream to look up)
    run(x.data_ptr(), 32, 0.5, *consts)
    assert fn.log[-1] == fn.log[-2] == ("direct", (2, 1, 1), (x.data_ptr(), 32, 0.5, 16, True))

    launch.compile_only = True
    assert launch(*call) is None and launch.runner(first, (2, 1, 1), call[2], -1) is None
    launch.compile_only = False
    assert launch((1, 1, 1), (None, 32, 0.5), {"BLOCK": 16, "FLAG": False}, {}) is None  # not a tensor: uncached
    assert launch.runner(None, (2, 1, 1), call[2], -1) is None
    assert DirectLaunch(FakeJit(), enabled=False)(*call) is None  # the interpreter

    failing = DirectLaunch(FakeJit(fail_direct=True), enabled=True)
    compiled = failing(*call)
    with pytest.warns(RuntimeWarning):
        assert failing(*call) is None
    assert failing.runner(compiled, (2, 1, 1), call[2], -1) is None


def test_a_gpu_launch_hands_the_runner_the_stream_tritons_driver_looks_up(monkeypatch):
    """On a GPU the direct launch and a decode recipe pass the runner its stream, looked up through the driver
    functions Triton's runner would call (the current stream of the current device); on the CPU they pass none."""
    import triton.runtime

    devices = []
    driver = SimpleNamespace(active=SimpleNamespace(get_current_device=lambda: devices.append(1) or 1,
                                                    get_current_stream=lambda device: 7000 + device))
    monkeypatch.setattr(triton.runtime, "driver", driver)
    fn = FakeJit()
    launch = DirectLaunch(fn, enabled=True)
    x = torch.zeros(64).as_subclass(_OnAnotherDevice)  # (reports GPU 1)
    call = ((2, 1, 1), (x, 32, 0.5), {"BLOCK": 16, "FLAG": True}, {})
    compiled = launch(*call)
    launch(*call)
    assert fn.log[-1] == ("direct", (2, 1, 1), (x.data_ptr(), 32, 0.5, 16, True), 7001)
    _, _, stream = launch.runner(compiled, (2, 1, 1), call[2], 1)
    n_asked = len(devices)
    assert stream() == 7001 and len(devices) == n_asked + 1  # (the device is asked at each launch)
    assert launch.runner(compiled, (2, 1, 1), call[2], -1)[2] is None
