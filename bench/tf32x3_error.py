"""How far a 3xTF32 recurrent dot lands from float64, emulated on the CPU.

    python -m bench.tf32x3_error

Triton's interpreter ignores `input_precision` (its tl.dot is numpy's float32 matmul for
"ieee", "tf32" and "tf32x3" alike), so running the kernels on the CPU cannot show what
3xTF32 does to the numbers. This emulates it instead, as Triton lowers it for NVIDIA
(each float32 operand split into a tf32 "big" part, cvt.rna, and the tf32 rounding of the
rest; three tf32 products big*big + big*small + small*big, the small*small term dropped,
summed in float32) and compares it, IEEE float32 and plain tf32 with float64 at the
recurrent dot's shape: h_{t-1} (16 x K) in [-1, 1] times W_hh^T with nn.LSTM's
U(-1/sqrt(H), 1/sqrt(H)) init. An emulation of the rounding, not the tensor cores' own
accumulation order, and not a GPU measurement.
"""
import torch


def round_tf32(x):
    """float32 -> nearest tf32 (10 mantissa bits), ties away from zero (PTX cvt.rna.tf32.f32)."""
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF  # add half an ulp of tf32 to the magnitude, truncate
    finite = (bits & 0x7F800000) != 0x7F800000
    return torch.where(finite, rounded, bits).view(torch.float32)


def dot_tf32(a, b):
    return round_tf32(a) @ round_tf32(b)  # products exact in float32, sums in float32


def dot_tf32x3(a, b):
    a_big, b_big = round_tf32(a), round_tf32(b)
    a_small, b_small = round_tf32(a - a_big), round_tf32(b - b_big)
    return a_small @ b_big + a_big @ b_small + a_big @ b_big


def relative_errors(k, n=64, rows=16, trials=8, seed=0):
    """Max |dot - float64| / max |float64| over `trials` draws, per way of computing it."""
    gen = torch.Generator().manual_seed(seed)
    worst = dict(ieee=0.0, tf32=0.0, tf32x3=0.0)
    for _ in range(trials):
        a = torch.rand(rows, k, generator=gen) * 2 - 1
        b = (torch.rand(k, n, generator=gen) * 2 - 1) / k ** 0.5
        want = a.double() @ b.double()
        scale = want.abs().max().item()
        for name, got in (("ieee", a @ b), ("tf32", dot_tf32(a, b)),
                          ("tf32x3", dot_tf32x3(a, b))):
            worst[name] = max(worst[name], (got.double() - want).abs().max().item() / scale)
    return worst


def main():
    torch.set_num_threads(1)
    print("| K | IEEE float32 | tf32 | 3xTF32 (emulated) |\n|---|---|---|---|")
    for k in (256, 768, 1024, 4096):
        e = relative_errors(k)
        print(f"| {k} | {e['ieee']:.1e} | {e['tf32']:.1e} | {e['tf32x3']:.1e} |")


if __name__ == "__main__":
    main()
