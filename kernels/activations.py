"""Activation helpers shared by every cell kernel.

Written from `exp` only: Triton's interpreter (the CPU test path) has no
libdevice, so `tl.math.tanh` / libdevice calls are not available there.
"""
import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    # exp(-x) overflows to inf for x << 0 and 1 / inf == 0, which is the limit.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # Away from 0: tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]:
    # never overflows, and NaN stays NaN (every operation propagates it).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    # Near 0, 1 - e cancels: in float32 tanh(1e-7) came out 40% off and tanh(1e-8) as 0,
    # while torch.tanh is accurate to an ulp. There the odd Taylor series is used; its first
    # omitted term, 1382/155925 x^11, is below the dtype's rounding for |x| < small
    # (float32: < 1e-8 relative at 0.25; float64: < 1e-16 at 0.04). It keeps -0.0's sign.
    if x.dtype == tl.float64:
        small = 0.04
    else:
        small = 0.25
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0
                                                                   + x2 * (62.0 / 2835.0)))))
    return tl.where(tl.abs(x) < small, series, tl.where(x < 0, -t, t))
