"""Layer-norm row math shared by the layer-normalised kernels (layer_norm_pointwise.py).

A layer norm here reduces over a whole row of a (rows, n_gates * H) matrix, which
the kernels hold as n_gates (BLOCK_B, BLOCK_H) gate tiles (the cell math in
cell_math.py wants them split by gate). So the helpers take the gates' row sums
and return per-row (BLOCK_B, 1) statistics that broadcast over every gate tile.
Masked elements (units >= H, rows past the step's batch) never enter a sum.

    x_hat = (x - mean) * rstd,  rstd = 1 / sqrt(var + EPS)   (biased variance, as torch)
    backward, with dx_hat = dL/dx_hat (= dL/dy * weight):
    dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
Two passes (mean, then the centred squares) as torch does: one-pass E[x^2] - E[x]^2
cancels badly when |mean| >> std.
"""
import triton
import triton.language as tl

EPS = tl.constexpr(1e-5)  # torch.nn.LayerNorm's default; the issue fixes it


@triton.jit
def row_sum(x, mask):
    """(BLOCK_B, 1) sum over the unmasked units of each row of a tile."""
    return tl.sum(tl.where(mask, x, 0.0), axis=1)[:, None]


@triton.jit
def centred(x, mean, mask):
    return tl.where(mask, x - mean, 0.0)


@triton.jit
def rstd_of(sum_sq, n):
    """1 / sqrt(biased variance + EPS) from the sum of centred squares over n values."""
    return 1.0 / tl.sqrt(sum_sq / n + EPS)


@triton.jit
def ln_normalise1(a, mask, n):
    """One tile holds the whole row: (a_hat, rstd)."""
    mean = row_sum(a, mask) / n
    da = centred(a, mean, mask)
    rstd = rstd_of(row_sum(da * da, mask), n)
    return da * rstd, rstd


@triton.jit
def ln_normalise3(a, b, c, mask, n):
    """A row split into three gate tiles: (a_hat, b_hat, c_hat, rstd)."""
    mean = (row_sum(a, mask) + row_sum(b, mask) + row_sum(c, mask)) / n
    da, db, dc = centred(a, mean, mask), centred(b, mean, mask), centred(c, mean, mask)
    rstd = rstd_of(row_sum(da * da, mask) + row_sum(db * db, mask) + row_sum(dc * dc, mask), n)
    return da * rstd, db * rstd, dc * rstd, rstd


@triton.jit
def ln_normalise4(a, b, c, d, mask, n):
    """A row split into four gate tiles: (a_hat, b_hat, c_hat, d_hat, rstd)."""
    mean = (row_sum(a, mask) + row_sum(b, mask) + row_sum(c, mask) + row_sum(d, mask)) / n
    da, db = centred(a, mean, mask), centred(b, mean, mask)
    dc, dd = centred(c, mean, mask), centred(d, mean, mask)
    rstd = rstd_of(row_sum(da * da, mask) + row_sum(db * db, mask) + row_sum(dc * dc, mask)
                   + row_sum(dd * dd, mask), n)
    return da * rstd, db * rstd, dc * rstd, dd * rstd, rstd


@triton.jit
def ln_input_grad(dx_hat, x_hat, mean_dx_hat, mean_dx_hat_x_hat, rstd):
    """dL/dx of one tile, from the row means of dx_hat and dx_hat * x_hat."""
    return rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)


@triton.jit
def ln_backward1(dx_hat, x_hat, rstd, mask, n):
    m1 = row_sum(dx_hat, mask) / n
    m2 = row_sum(dx_hat * x_hat, mask) / n
    return ln_input_grad(dx_hat, x_hat, m1, m2, rstd)


@triton.jit
def ln_backward3(dx_a, dx_b, dx_c, a, b, c, rstd, mask, n):
    """Three gate tiles of dx_hat and x_hat -> three tiles of dL/dx."""
    m1 = (row_sum(dx_a, mask) + row_sum(dx_b, mask) + row_sum(dx_c, mask)) / n
    m2 = (row_sum(dx_a * a, mask) + row_sum(dx_b * b, mask) + row_sum(dx_c * c, mask)) / n
    return (ln_input_grad(dx_a, a, m1, m2, rstd), ln_input_grad(dx_b, b, m1, m2, rstd),
            ln_input_grad(dx_c, c, m1, m2, rstd))


@triton.jit
def ln_backward4(dx_a, dx_b, dx_c, dx_d, a, b, c, d, rstd, mask, n):
    """Four gate tiles of dx_hat and x_hat -> four tiles of dL/dx."""
    m1 = (row_sum(dx_a, mask) + row_sum(dx_b, mask) + row_sum(dx_c, mask)
          + row_sum(dx_d, mask)) / n
    m2 = (row_sum(dx_a * a, mask) + row_sum(dx_b * b, mask) + row_sum(dx_c * c, mask)
          + row_sum(dx_d * d, mask)) / n
    return (ln_input_grad(dx_a, a, m1, m2, rstd), ln_input_grad(dx_b, b, m1, m2, rstd),
            ln_input_grad(dx_c, c, m1, m2, rstd), ln_input_grad(dx_d, d, m1, m2, rstd))


@triton.jit
def load_vector(ptr, units, q, H, COMPUTE: tl.constexpr):
    """Gate q of a (n_gates * H,) parameter as a (1, BLOCK_H) row that broadcasts."""
    return tl.load(ptr + q * H + units, mask=units < H, other=0.0).to(COMPUTE)


@triton.jit
def load_row_stat(ptr, rows, stride, n_rows, COMPUTE: tl.constexpr):
    """A per-row statistic (rows, 1) saved by forward."""
    return tl.load(ptr + rows * stride, mask=rows < n_rows, other=1.0).to(COMPUTE)


@triton.jit
def store_row_stat(ptr, rows, stride, n_rows, value):
    tl.store(ptr + rows * stride, value.to(ptr.dtype.element_ty), mask=rows < n_rows)
