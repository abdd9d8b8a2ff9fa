"""Prepared launches (kernels/launch.py) pass Triton's launcher exactly what Triton's own
runtime passes it.

The shortcut only exists where kernels are compiled (the interpreter runs Triton's own
path), so these tests compile the step kernels for sm_90 in a process without
TRITON_INTERPRET, with Triton's driver replaced by bench.host.FakeH100 whose launcher
records its arguments instead of launching. Each launch runs twice on the same arguments:
through `kernel[grid]` (Triton's binder) and through `prepared(kernel)[grid]`, whose
first call per specialisation takes Triton's path and whose later calls take the
shortcut; the recorded calls must be identical, the compiled function included.
"""
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import torch
import triton
from bench import host
from lstm_triton.kernels import gru_pointwise, launch, lstm_pointwise

calls = []


class Recording(host._NoLaunch):
    def __call__(self, *args):
        calls.append(args)


host.FakeH100.launcher_cls = Recording
host.install_fake_h100()
torch.manual_seed(0)
B, H = 3, 20


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.data_ptr() == b.data_ptr() and a.dtype == b.dtype
    return type(a) is type(b) and a == b


def alike(a, b):
    # a tensor the launcher allocates afresh on each call: the same dtype, shape, alignment
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.data_ptr() % 16 == b.data_ptr() % 16 == 0)
    return same(a, b)


def check(run, compare=same):
    n_shortcut = 0
    # run(kernels) launches through `kernels`: {"real name": kernel or prepared kernel}
    for prepared in (False, True, True):  # Triton's path, then prepared: first and cached
        calls.clear()
        run(prepared)
        if not prepared:
            expected = list(calls)
            continue
        assert len(calls) == len(expected) > 0, (len(calls), len(expected))
        n_shortcut += sum(c[6] is None for c in calls)
        for got, want in zip(calls, expected):
            same_call(got, want, compare)
    assert n_shortcut == len(expected), "the cached launches must take the shortcut"


def same_call(got, want, compare=same):
    assert len(got) == len(want), (len(got), len(want))
    # grid, stream, function, packed metadata, arguments: the same; launch metadata and
    # hooks: Triton passes empty hook chains (which call nothing, so nothing reads the
    # metadata), the prepared launch None
    for k, (a, b) in enumerate(zip(got, want)):
        if k == 6:
            assert a is None or type(a) is type(b), (a, b)
        elif k in (7, 8):
            assert a in (None, b) and (b is None or b.calls == []), (k, a, b)
        else:
            assert compare(a, b), (k, a, b)


def check_stepper(kernel, grid, args, flags, varying, steps):
    # a stepper's launches, one per tuple of `steps`, pass what kernel[grid] passes with
    # those values in place; making it launches nothing
    calls.clear()
    for values in steps:
        full = list(args)
        for i, value in zip(varying, values):
            full[i] = value
        kernel[grid](*full, **flags)
    expected = list(calls)
    calls.clear()
    step = launch.prepared(kernel).stepper(grid, args, flags, varying, 1000)
    assert calls == []
    for values in steps:
        step(*values)
    assert len(calls) == len(expected) == len(steps)
    assert all(c[6] is None for c in calls), "a stepper's launches take the shortcut"
    for got, want in zip(calls, expected):
        same_call(got, want)


class TritonPath:
    # prepared(kernel) as Triton's own path: every launch through kernel[grid]
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return self.fn[grid]

    def launch(self, grid, *args, **kwargs):
        return self.fn[grid](*args, **kwargs)

    def launch_with(self, grid, args, constants):
        return self.fn[grid](*args, **constants)


def patched(module, prepared):
    # the module's launch functions call prepared(kernel): Triton's own path is the same
    # call through kernel[grid]
    module.prepared = launch.prepared if prepared else TritonPath


for dtype, offset in ((torch.float32, 0), (torch.float16, 0), (torch.float32, 1)):
    # offset 1: every tensor starts 4 bytes past 16-byte alignment (another specialisation)
    def t(*shape, dt=dtype):
        return torch.randn(shape[0] * shape[1] + offset).to(dt)[offset:].view(*shape)

    state = torch.float32 if dtype == torch.float16 else dtype
    gx, rec, c, m, hs, gates, cs = (t(B, 4 * H), t(B, 4 * H), t(B, H, dt=state), t(B, H),
                                    t(B, H), t(B, 4 * H), t(B, H, dt=state))

    def lstm(prepared):
        patched(lstm_pointwise, prepared)
        lstm_pointwise.lstm_step_fwd(gx, rec, c, m, hs, gates, cs)
        lstm_pointwise.lstm_step_fwd(gx[:2], rec[:2], c, m[:2], None, None, None)
        lstm_pointwise.lstm_step_bwd(m, hs, c, gates, cs, cs, 2, c, rec)
        lstm_pointwise.lstm_step_bwd(m[:1], None, c, gates[:1], cs[:1], None, 0, c, rec[:1])

    def gru(prepared):
        patched(gru_pointwise, prepared)
        gru_pointwise.gru_step_fwd(gx[:, :3 * H], rec[:, :3 * H], hs, m, gates)
        gru_pointwise.gru_step_fwd(gx[:2, :3 * H], rec[:2, :3 * H], hs, m[:2], None)
        gru_pointwise.gru_step_bwd(m, hs, gates, hs, 2, m, gx[:, :3 * H], rec[:, :3 * H])

    check(lstm)
    check(gru)

n_entries = sum(len(k.cache) for k in launch._PREPARED.values())

# persistent launches (their constexprs one launch.Constants, unread pointers None, a padded
# batch's rows computed in the kernel), LSTM padded and GRU packed, forward and backward:
# the launcher allocates its outputs on each call, so those compare by dtype, shape and
# alignment
from bench.compiled import H100
from lstm_triton.kernels import persistent_config, persistent_gru, persistent_lstm
from lstm_triton.schedule import Schedule


def rand(*shape):
    return torch.randn(*shape)


for cell, module, sizes in (("lstm", persistent_lstm, None),
                            ("gru", persistent_gru, torch.tensor([3, 2, 2, 1]))):
    n_gates = 4 if cell == "lstm" else 3
    n_rows = 4 * B if sizes is None else int(sizes.sum())
    sched = Schedule.build(sizes, n_rows, B, reverse=sizes is not None)
    plan, _ = persistent_config.plan(n_gates, torch.device("cuda"), torch.float32, B, H, H,
                                     budget=tuple(H100.values()))
    gx, h0, c0, w_hh = rand(n_rows, n_gates * H), rand(B, H), rand(B, H), rand(n_gates * H, H)
    y, dy, gates, c_all = rand(n_rows, H), rand(n_rows, H), rand(n_rows, 4 * H), rand(n_rows, H)

    def persistent(prepared):
        patched(module, prepared)
        if cell == "lstm":
            persistent_lstm.lstm_persistent_fwd(gx, sched, h0, c0, w_hh, None, True, plan)
            persistent_lstm.lstm_persistent_bwd(dy, h0, c0, sched, c0, w_hh, None, gates, c_all,
                                                plan)
        else:
            persistent_gru.gru_persistent_fwd(gx, sched, h0, w_hh, rand(3 * H), True, plan)
            persistent_gru.gru_persistent_bwd(dy, h0, sched, h0, w_hh, y, gates, plan)

    check(persistent, alike)

# a small layer's loop (kernels/fused_steps.py): its steps differ in a few row offsets
import triton.language as tl
from lstm_triton.kernels import cell_fused, fused_steps
N = 4 * B
flags = dict(DOT=1, COMPUTE=tl.float32, BLOCK_B=16, BLOCK_H=16, BLOCK_K=32)
f32 = lambda *shape: torch.randn(*shape)
y, gx, c, w_hh, h_n, gates, cs = f32(N, H), f32(N, 4 * H), f32(B, H), f32(4 * H, H), f32(B, H), \
    f32(N, 4 * H), f32(N, H)
grid = (triton.cdiv(H, 16),)
fwd = [gx, y, c, None, w_hh, None, None, y, c, gates, cs, h_n, B, 0, H, 0, 0, gx.stride(0),
       y.stride(0), c.stride(0), 0, H, H, H, 4 * H, H, H]
check_stepper(cell_fused.lstm_cell_fused_kernel, grid, fwd,
              dict(flags, HAS_BIAS=False, SAVE=True, PROJECTED=True, STATE=True), (12, 15, 16),
              [(B, B, 0), (B - 1, 2 * B, B), (1, 3 * B, 2 * B)])
bwd = [y, h_n, gates, w_hh, gates, cs, c, c, 0, H, 0, 0, 0, 0, 0, H, H, 4 * H, H, 4 * H, H, H, H]
check_stepper(fused_steps.lstm_step_fused_bwd_kernel, grid, bwd, flags, (8, 10, 11, 12, 13, 14),
              [(B, 3 * B, 0, 0, 2 * B, B), (B, 2 * B, 3 * B, B, B, B), (B, 0, B, B, 0, 0)])
gru_fwd = [gx[:, :3 * H], y, None, w_hh[:3 * H], None, gx[0, :3 * H], y, gates, h_n, B, 0, H,
           0, 0, 4 * H, H, 0, H, H, 4 * H, H]
check_stepper(cell_fused.gru_cell_fused_kernel, grid, gru_fwd,
              dict(flags, HAS_BIAS=True, SAVE=True, PROJECTED=True, STATE=True), (9, 12, 13),
              [(B, B, 0), (B - 1, 2 * B, B), (1, 3 * B, 2 * B)])
gru_bwd = [y, h_n, gx[:, :3 * H], gates[:, :3 * H], w_hh[:3 * H], gates, y, h_n, c, 0, H, 0, 0,
           0, 0, 0, H, H, 4 * H, 4 * H, H, 4 * H, H, H, H]
check_stepper(fused_steps.gru_step_fused_bwd_kernel, grid, gru_bwd, flags,
              (9, 11, 12, 13, 14, 15),
              [(B, 3 * B, 0, 0, 2 * B, B), (B, 2 * B, 3 * B, B, B, B), (B, 0, B, B, 0, 0)])
try:
    launch.prepared(fused_steps.lstm_step_fused_bwd_kernel).stepper(grid, bwd, flags, (9,), 1)
except ValueError as e:
    assert "['H']" in str(e) and "do_not_specialize" in str(e), e
else:
    raise AssertionError("a specialised argument may not vary")
print("PREPARED OK", n_entries)
"""


@pytest.mark.sm90
@pytest.mark.slow
def test_prepared_launch_passes_what_tritons_runtime_passes():
    """LSTM and GRU step kernels, forward and backward, with and without the optional
    tensors, float32 and float16, 16-byte aligned and not: the launcher sees the same
    grid, stream, compiled function, metadata and arguments either way. So do the persistent
    kernels' launches (their constants given once, launch.Constants). A small layer's
    loop (a stepper: kernels/fused_steps.py) too, step by step, and a stepper refuses to
    vary an argument Triton specialises on."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=900, cwd=repo)
    assert done.returncode == 0 and "PREPARED OK" in done.stdout, done.stderr[-3000:]
    # one cache entry per (kernel, flags, dtype, alignment) seen: 3 variants x (2 LSTM fwd
    # + 2 LSTM bwd + 2 GRU fwd + 1 GRU bwd) specialisations
    assert int(done.stdout.split("PREPARED OK")[1]) == 21, done.stdout


def test_launch_key_is_as_fine_as_tritons_specialisation():
    """The key a prepared launch looks its compiled kernel up by (launch._key): a tensor by
    dtype and 16-byte alignment, an integer by value, a bool apart from the equal integer,
    None by position; a type it does not know is refused (Triton's own path then runs)."""
    import torch

    from lstm_triton.kernels.launch import _key

    t = torch.zeros(64)
    assert _key((t, 3)) == _key((torch.ones(64), 3))
    assert _key((t, 3)) != _key((t, 4))
    assert _key((t, 3)) != _key((t.double(), 3))
    assert _key((t[1:], 3)) != _key((t, 3))  # 4 bytes in: not 16-byte aligned
    assert _key((t, 1)) != _key((t, True)) and _key((t, 1)) != _key((t, 1.0))
    assert _key((None, t)) != _key((t, None))

    class Sub(torch.Tensor):
        pass

    with pytest.raises(TypeError):
        _key((t.as_subclass(Sub), 3))


def test_a_launch_is_made_on_the_device_of_its_tensors(monkeypatch):
    """Triton launches on the current CUDA device; a layer on another GPU must be launched
    there (else its pointers are read on the wrong device). Without a second GPU, the guard's
    decision is checked on a stand-in tensor: on another device it switches, on the current
    one (and for CPU tensors) it does nothing."""
    import torch

    from lstm_triton.kernels import launch

    class OnGPU:
        is_cuda = True

        def __init__(self, index):
            self.index = index

        def get_device(self):
            return self.index

    entered = []

    class Switch:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            entered.append(self.index)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(launch, "_PLAIN", launch._PLAIN + (OnGPU,))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Switch)
    assert launch._device_guard(OnGPU(0)) is launch._NO_GUARD
    assert launch._device_guard(torch.zeros(1)) is launch._NO_GUARD
    with launch._device_guard(OnGPU(1)):
        pass
    assert entered == [1]

    calls = []
    kernel = launch.PreparedKernel(lambda: None)
    monkeypatch.setattr(kernel, "_launch", lambda grid, args, kwargs: calls.append(list(entered)))
    kernel.launch((1,), OnGPU(1))
    assert calls == [[1, 1]]  # the launch itself ran inside the switch
