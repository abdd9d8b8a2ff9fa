"""The per-step arguments of issue 18's options, as the step kernels take them (and, at
the end, the per-call block of the persistent kernels).

Every step kernel (lstm_pointwise.py, gru_pointwise.py) takes the same block of six
pointers, five integers and six constexpr flags; `kernel_args` builds it from a
StepVariant, or the all-off block (the plain cell, compiled without any of it) from None.
The math is in cell_math.py (zoneout, row_keep, recurrent_scale).
"""
from typing import NamedTuple, Optional

from torch import Tensor


class StepVariant(NamedTuple):
    keep: Optional[Tensor] = None  # (n,) 1 - reset of the state entering this step's rows
    keep_next: Optional[Tensor] = None  # keep of the step that follows in forward order
    n_next: int = 0  # its row count
    drop: Optional[Tensor] = None  # (B, P) recurrent-dropout mask (scaled)
    zone_c: Optional[Tensor] = None  # (n, H) zoneout of c (row stride 0 in eval)
    zone_h: Optional[Tensor] = None  # (n, P) zoneout of h
    carry: Optional[Tensor] = None  # (B, P) forward: the next GEMM input h_t * scale (out);
    #                                 backward: the direct part of dL/dh_{t-1} (in/out)


_ALL_OFF = ([None] * 6, [0] * 5, dict(KEEP=False, SCALE_KEEP=False, DROP=False,
                                        ZONE_C=False, ZONE_H=False, CARRY=False))


def kernel_args(step: Optional[StepVariant]):
    """(pointers, integers, flags) for a step kernel: see StepVariant. An option that is
    off passes None for its pointer: Triton makes a None argument a constexpr, which the
    launch then neither specialises nor passes (six fewer tensors to key a plain step's
    launch on, issue 17), and the kernel never reads it (its flag is off)."""
    if step is None:
        return _ALL_OFF

    def stride(t):
        return t.stride(0) if t is not None else 0

    pointers = [step.keep, step.keep_next, step.drop, step.zone_c, step.zone_h, step.carry]
    integers = [step.n_next, stride(step.drop), stride(step.zone_c), stride(step.zone_h),
                stride(step.carry)]
    flags = dict(KEEP=step.keep is not None, SCALE_KEEP=step.keep_next is not None,
                 DROP=step.drop is not None, ZONE_C=step.zone_c is not None,
                 ZONE_H=step.zone_h is not None, CARRY=step.carry is not None)
    return pointers, integers, flags


_PERSISTENT_OFF = ([None] * 4, [0] * 3, (("KEEP", False), ("DROP", False),
                                          ("ZONE_C", False), ("ZONE_H", False)))


def variant_args(variant, dummy: Tensor):
    """The persistent kernels' block: (pointers keep, drop, zone_c, zone_h; the row strides
    of the last three; flags as (name, value) pairs, persistent_config.launch_constants'
    options) of a variants.Variant, or the all-off block for None or an
    inactive one (None pointers: nothing to key or pass). With an option on, the pointers of
    the others are `dummy`, never read: the kernels add offsets to keep_ptr under KEEP or
    DROP alike, which a None would refuse."""
    if variant is None or not variant.active:
        return _PERSISTENT_OFF
    keep, drop, zone_c, zone_h = variant
    pointers = [t if t is not None else dummy for t in (keep, drop, zone_c, zone_h)]
    strides = [t.stride(0) if t is not None else 0 for t in (drop, zone_c, zone_h)]
    flags = (("KEEP", keep is not None), ("DROP", drop is not None),
             ("ZONE_C", zone_c is not None), ("ZONE_H", zone_h is not None))
    return pointers, strides, flags
