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
    # tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]:
    # never overflows, and NaN stays NaN (every operation propagates it).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)
