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
        def runner(*args):
            grid[0], grid[1], grid[2]  # Triton's runner reads three grid entries
            if self.fail:
                raise TypeError("launcher expects other arguments")
            self.log.append(("direct", grid, args))
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


def test_repeat_signatures_launch_directly_with_constexprs_in_parameter_order():
    fn = FakeJit()
    launch = DirectLaunch(fn, enabled=True)
    x = torch.zeros(64)
    launch((2, 1, 1), (x, 32, 0.5), {"FLAG": True, "BLOCK": 16}, {"num_warps": 4})
    launch((3, 1, 1), (x, 48, 0.25), {"FLAG": True, "BLOCK": 16}, {"num_warps": 4})  # 48: also a multiple of 16
    assert [e[0] for e in fn.log] == ["triton", "direct"]
    assert fn.log[1] == ("direct", (3, 1, 1), (x, 48, 0.25, 16, True))


@pytest.mark.parametrize("change", ["int_not_multiple_of_16", "int_one", "misaligned", "dtype", "constexpr",
                                    "option"])
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
    elif change == "constexpr":
        consts = {"BLOCK": 32, "FLAG": True}
    else:
        opts = {"num_warps": 8}
    launch((1, 1, 1), args, consts, opts)
    assert [e[0] for e in fn.log] == ["triton", "triton"]


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
