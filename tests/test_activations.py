"""The activation helpers every kernel uses (kernels/activations.py), against torch, over
magnitudes from 1e-12 to 30 of both signs: relative accuracy near 0 as well as far from
it, and the special values (signed zeros, infinities, NaN)."""
import math

import pytest
import torch
import triton
import triton.language as tl
from rnn_testing import DEVICE, twin_modules

from lstm_triton.kernels.activations import sigmoid, tanh

# max relative error allowed: a few ulp (torch's own float32 tanh/sigmoid: ~1 ulp). On a GPU
# tl.exp is ex2.approx of x * log2(e), whose rounding costs ~|x| ulp: ~2e-6 at |x| = 30.
REL = {torch.float32: 3e-7 if DEVICE == "cpu" else 3e-6, torch.float64: 2e-15}


@triton.jit
def _apply(x_ptr, y_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + offs, mask=ok)
    if FN == 0:
        tl.store(y_ptr + offs, tanh(x), mask=ok)
    else:
        tl.store(y_ptr + offs, sigmoid(x), mask=ok)


def apply(fn, x):
    y = torch.full_like(x, 7.0)  # poisoned: an unwritten element fails
    _apply[(1,)](x, y, x.numel(), FN=0 if fn == "tanh" else 1,
                 BLOCK=triton.next_power_of_2(x.numel()))
    return y


def magnitudes(dtype):
    m = torch.logspace(-12, math.log10(30), 300, dtype=torch.float64)
    # both sides of tanh's switch from its series to exp (0.25 float32, 0.04 float64)
    edges = torch.tensor([0.04, 0.25], dtype=torch.float64)
    m = torch.cat([m, edges * (1 - 1e-6), edges * (1 + 1e-6)])
    return torch.cat([m, -m]).to(dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_relative_accuracy_near_zero_and_away_from_it(fn, dtype):
    x = magnitudes(dtype)
    want = getattr(torch, fn)(x.double())
    got = apply(fn, x).double()
    rel = (got - want).abs() / want.abs()
    worst = int(rel.argmax())
    assert rel.max() <= REL[dtype], f"{fn}({x[worst].item():.3g}): rel error {rel.max():.3g}"


def test_float64_tanh_stays_within_a_few_ulp_on_both_sides_of_its_switch():
    """Densely around the float64 switch from the series to exp (0.04): the series must
    serve every |x| below it, where 1 - exp(-2|x|) already cancels (switching at 0.02
    instead costs up to 1.8e-15 relative in [0.02, 0.04], within the 2e-15 above but 2-8x
    what torch's tanh and the series give there). exp's own error above 0.04 is < 1e-15."""
    m = torch.linspace(0.005, 0.08, 6001, dtype=torch.float64)
    x = torch.cat([m, -m]).to(DEVICE)
    want = torch.tanh(x)
    rel = (apply("tanh", x) - want).abs() / want.abs()
    worst = int(rel.argmax())
    assert rel.max() <= 1.25e-15, f"tanh({x[worst].item():.6g}): rel error {rel.max():.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_special_values_as_torch(dtype):
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e30, -1e30], dtype=dtype,
                     device=DEVICE)
    for fn in ("tanh", "sigmoid"):
        got, want = apply(fn, x), getattr(torch, fn)(x)
        assert torch.equal(got.isnan(), want.isnan()), fn
        finite = ~want.isnan()
        assert torch.equal(got[finite], want[finite]), (fn, got, want)
        assert torch.equal(got.signbit()[finite], want.signbit()[finite]), fn  # tanh(-0) = -0


def test_lstm_with_small_activations_keeps_relative_accuracy():
    """Small weights and inputs (|y| ~ 1e-5): the outputs are accurate relative to their own
    size, as torch's are, not just to an absolute 1e-7 (a tanh that cancels near 0 gave
    5e-3 relative error here)."""
    module, oracle = twin_modules("lstm", 3, 5, backend="stepwise")
    with torch.no_grad():
        for p, q in zip(module.parameters(), oracle.parameters()):
            p.mul_(1e-4)
            q.copy_(p)
        x = torch.randn(4, 2, 3, device=DEVICE) * 1e-3
        got, want = module(x)[0].double(), oracle(x.double())[0]
    assert ((got - want).abs() / want.abs()).max() < 2e-6
