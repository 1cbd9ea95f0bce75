"""``ops/triton/common.launch`` on CPU: which calls go to a compiled kernel's launcher directly, and
with what arguments.

Triton does not run here: the kernel is a stand-in whose ``[grid]`` call records the ordinary launch
and returns a stand-in compiled kernel, shaped as Triton 3.6's (``run.launch``, ``function``,
``packed_metadata``, scratch sizes), whose C launcher records its arguments. The GPU test
(test_triton_direct.py) checks the real launcher's results against Triton's own launch, bit for bit.
"""

from __future__ import annotations

import types

import pytest
import torch
from triton_host_harness import load_triton_ops


@pytest.fixture
def common(monkeypatch):
    *_, undo = load_triton_ops()  # a stand-in Triton where none is installed, removed after the test
    from emaprobe.ops.triton import common

    hooks = types.SimpleNamespace(launch_enter_hook=types.SimpleNamespace(calls=[]),
                                  launch_exit_hook=types.SimpleNamespace(calls=[]))
    monkeypatch.setattr(common, "triton", types.SimpleNamespace(knobs=types.SimpleNamespace(runtime=hooks)))
    monkeypatch.setattr(common, "DIRECT", True)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda d: 1000 + d, raising=False)
    monkeypatch.setattr(common, "hooks", hooks, raising=False)
    yield common
    undo()


class Param:
    def __init__(self, name, constexpr=False, default=None):
        self.name, self.is_constexpr, self.default = name, constexpr, default


class Kernel:
    """A JIT function's stand-in: X, Y (tensors), N, M (ints), then constexprs BLOCK and FLAG=True."""

    def __init__(self, scratch: int = 0):
        self.params = [Param("X"), Param("Y"), Param("N"), Param("M"),
                       Param("BLOCK", True), Param("FLAG", True, default=True)]
        self.ordinary: list = []
        self.direct: list = []
        self.scratch = scratch

    def __getitem__(self, grid):
        def call(*args, **consts):
            self.ordinary.append((grid, args, consts))
            c_launch = lambda *a: self.direct.append(a)  # noqa: E731
            run = types.SimpleNamespace(launch=c_launch, global_scratch_size=self.scratch, profile_scratch_size=0,
                                        launch_cooperative_grid=False, launch_pdl=False)
            return types.SimpleNamespace(run=run, function=77, packed_metadata=(4, 1, 0))

        return call


def _site(common, kernel):
    return common.make_launch(kernel, (3, 2, 1), dict(BLOCK=64, num_warps=4), fixed=(9,))


def test_a_repeat_goes_to_the_launcher_with_addresses_ints_and_constexprs_in_signature_order(common):
    k = Kernel()
    site = _site(common, k)
    x, y = torch.randn(5), torch.randn(7)
    common.launch(site, (x, y), (11,))
    assert k.ordinary == [((3, 2, 1), (x, y, 9, 11), dict(BLOCK=64, num_warps=4))] and k.direct == []
    common.launch(site, (x, y), (11,))
    assert len(k.ordinary) == 1
    assert k.direct == [(3, 2, 1, 1000, 77, False, False, None, None, (4, 1, 0), None, None, None,
                         x.data_ptr(), y.data_ptr(), 9, 11, 64, True)]


@pytest.mark.parametrize("change", ["dtype", "alignment", "int"])
def test_what_triton_specializes_on_gets_its_own_kernel(common, change):
    k = Kernel()
    site = _site(common, k)
    buf = torch.randn(64)
    x, y, n = buf[:8], torch.randn(7), 11
    common.launch(site, (x, y), (n,))
    if change == "dtype":
        x = x.double()
    elif change == "alignment":
        x = buf[1:9]  # 4 bytes past a 16-byte boundary
    else:
        n = 12
    common.launch(site, (x, y), (n,))
    assert len(k.ordinary) == 2 and k.direct == []  # a new key: Triton's own launch, which compiles for it
    common.launch(site, (x, y), (n,))
    assert len(k.ordinary) == 2 and len(k.direct) == 1


def test_hooks_compiling_and_scratch_take_the_ordinary_path(common, monkeypatch):
    k = Kernel()
    site = _site(common, k)
    x, y = torch.randn(5), torch.randn(7)
    common.launch(site, (x, y), (11,))
    common.hooks.launch_enter_hook.calls.append(print)  # a profiler's hook: every launch must reach Triton
    common.launch(site, (x, y), (11,))
    common.hooks.launch_enter_hook.calls.clear()
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        common.launch(site, (x, y), (11,))
    assert len(k.ordinary) == 3 and k.direct == []
    scratch = Kernel(scratch=128)  # needs scratch memory, which only Triton's launcher allocates
    site = _site(common, scratch)
    for _ in range(3):
        common.launch(site, (x, y), (11,))
    assert len(scratch.ordinary) == 3 and scratch.direct == []


def test_direct_off_never_keeps_a_kernel(common, monkeypatch):
    monkeypatch.setattr(common, "DIRECT", False)
    k = Kernel()
    site = _site(common, k)
    x, y = torch.randn(5), torch.randn(7)
    for _ in range(3):
        common.launch(site, (x, y), (11,))
    assert len(k.ordinary) == 3 and k.direct == [] and site.kernels == {}


def test_direct_is_only_for_triton_3_6_outside_the_interpreter(common, monkeypatch):
    monkeypatch.setattr(common, "triton", types.SimpleNamespace(__version__="3.6.0"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("EMAPROBE_TRITON_DIRECT", raising=False)
    assert common._direct_supported()
    monkeypatch.setenv("EMAPROBE_TRITON_DIRECT", "0")
    assert not common._direct_supported()
    monkeypatch.delenv("EMAPROBE_TRITON_DIRECT")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not common._direct_supported()
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(common, "triton", types.SimpleNamespace(__version__="3.5.1"))
    assert not common._direct_supported()
