"""TritonLSTMCell and TritonGRUCell: drop-ins for nn.LSTMCell / nn.GRUCell.

A cell call is a one-step layer. Under torch.compile, export, tracing, vmap, forward-mode
AD or with `reset=`, it runs `ops.rnn_layer` (the same custom op the multi-step modules
use) on the B rows of a single timestep: one input GEMM, one recurrent GEMM and the fused
pointwise step kernel (kernels/lstm_pointwise.py, kernels/gru_pointwise.py), forward and
backward, one op in a compiled graph. A plain eager call takes the shortest road instead
(lstm_triton/cell_step.py, issue 17): at small sizes one launch doing both GEMMs and the
gates (kernels/cell_fused.py), else the same GEMMs and step kernel without the layer's
machinery; backward is the step kernel and GEMMs either way.

They subclass torch's cells, so parameters, initialisation, state_dict and
the call contract are torch's: `h, c = cell(x, (h, c))`, `h = gru_cell(x, h)`,
batched (B, I) or unbatched (I,) input, hx optional (zeros). Beyond torch's contract,
the keyword `reset=` (bool, (B,) or a scalar unbatched) zeroes the state of the rows that
start afresh at this step (an episode start in a rollout), inside the step kernel.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

from . import cell_step, scripting
from .dispatch import choose_backend, triton_can_run
from .export import export_backend
from .kernels.config import state_dtype
from .ops import plain_eager
from .rnn import BackendOption, autocast_enabled, run_layer
from .variants import Variant, check_cell_reset


def cell_autocast_dtype(device_type, dtype):
    """The dtype nn.LSTMCell / nn.GRUCell compute in under autocast, or None for no autocast.

    CUDA autocast casts `lstm_cell` / `gru_cell` to the autocast dtype. CPU
    autocast does not list them: torch's cells then return the input's dtype
    (their GEMMs autocast, the pointwise part promotes back), so we run in it.
    """
    if not autocast_enabled(device_type) or dtype == torch.float64:
        return None
    if device_type == "cuda":
        return torch.get_autocast_dtype("cuda")
    return dtype


def one_step_road(x, h0, c0, weights) -> bool:
    """Whether a stepwise cell call may take cell_step's road: only where the layer's road
    would run the op's implementation directly (ops.rnn_layer_fast: plain eager, which also
    rules out every export, trace and functorch transform) and not the reference
    (rnn.needs_reference): of that, only forward-mode AD is left after plain_eager, and any
    open dual level sends the call the layer's way."""
    return plain_eager(x, h0, c0, *weights) and forward_ad._current_level < 0


class _TritonCellDriver(BackendOption):
    """Mixin holding the forward shared by TritonLSTMCell and TritonGRUCell."""

    def forward(self, input, hx=None, *, reset=None):
        backend = export_backend(self) or choose_backend(self.backend, input.device)
        reset = check_cell_reset(type(self).__name__, reset, input)
        if backend == "torch":
            if reset is not None and hx is not None:  # torch's cell has no reset: zero hx here
                keep = (~reset).to(input.dtype)
                keep = keep[:, None] if input.dim() == 2 else keep
                hx = tuple(s * keep for s in hx) if isinstance(hx, (tuple, list)) else hx * keep
            return super(BackendOption, self).forward(input, hx)  # torch's own cell
        return self._cell_forward(input, hx, backend, reset)

    def _one_step(self, x, hx):
        """The common call by the shortest road (cell_step.py, issue 17), or None for the
        general one: a batched input, states given as torch's cell takes them (or None),
        every tensor of the weights' dtype and device, a Triton device and the stepwise
        backend, no autocast, and plain eager (no compile, export, trace, transform or
        forward-mode AD). What it leaves to the general road includes every error."""
        params = self._parameters
        w_ih = params["weight_ih"]
        dtype, device = w_ih.dtype, w_ih.device
        if (x.__class__ is not Tensor or x.dim() != 2 or x.shape[1] != self.input_size
                or x.dtype != dtype or x.device != device or self.backend == "torch"
                or self.backend == "reference" or not triton_can_run(device)):
            return None
        lstm = self.cell == "lstm"
        if hx is None:
            h0 = x.new_zeros(x.shape[0], self.hidden_size)
            states = (h0, h0) if lstm else (h0,)
        elif lstm and isinstance(hx, (tuple, list)) and len(hx) == 2:
            states = hx
        elif not lstm and hx.__class__ is Tensor:
            states = (hx,)
        else:
            return None
        shape = (x.shape[0], self.hidden_size)
        for s in states:
            if s.__class__ is not Tensor or s.shape != shape or s.dtype != dtype or \
                    s.device != device:
                return None
        weights = (w_ih, params["weight_hh"], params["bias_ih"], params["bias_hh"])
        if torch.is_autocast_enabled(device.type) or not one_step_road(
                x, states[0], states[1] if lstm else None, weights):
            return None
        new = cell_step.step(self.cell, x.contiguous(), states[0].contiguous(),
                             states[1].contiguous() if lstm else None,
                             *(w if w is None else w.contiguous() for w in weights))
        return new if lstm else new[0]

    def _check(self, x, states):
        name = type(self).__name__
        if x.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {x.dim()}D instead; "
                             f"pass (batch, input_size) or (input_size,).")
        for k, s in enumerate(states):
            if s.dim() not in (1, 2):
                what = f"hx[{k}]" if self.cell == "lstm" else "hidden"
                raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D "
                                 f"instead; pass (batch, hidden_size) or (hidden_size,).")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {x.shape[-1]} expected "
                f"{self.input_size}; pass inputs with {self.input_size} features.")
        for k, s in enumerate(states):
            if s.dim() != x.dim():
                raise RuntimeError(
                    f"{name}: hx[{k}] is {s.dim()}-D but the input is {x.dim()}-D; give states "
                    f"of shape {'(batch, hidden_size)' if x.dim() == 2 else '(hidden_size,)'}.")
            if x.dim() == 2 and s.shape[0] != x.shape[0]:
                raise RuntimeError(
                    f"Input batch size {x.shape[0]} doesn't match hidden{k} batch size "
                    f"{s.shape[0]}; give states with {x.shape[0]} rows.")
            if s.shape[-1] != self.hidden_size:
                raise RuntimeError(
                    f"hidden{k} has inconsistent hidden_size: got {s.shape[-1]}, expected "
                    f"{self.hidden_size}.")
        autocasting = autocast_enabled(x.device.type)
        for t, what in [(x, "input")] + [(s, f"hx[{k}]") for k, s in enumerate(states)]:
            if not t.is_floating_point():
                raise RuntimeError(f"{name}: {what} dtype {t.dtype} is not floating point; "
                                   f"convert it with .to({self.weight_ih.dtype}).")
            if t.dtype != self.weight_ih.dtype and not autocasting:
                raise RuntimeError(
                    f"{name}: {what} dtype ({t.dtype}) does not match weight dtype "
                    f"({self.weight_ih.dtype}); convert it with .to({self.weight_ih.dtype}) "
                    f"or the module with .to({t.dtype}).")
            if t.device != self.weight_ih.device:
                raise RuntimeError(
                    f"{name}: {what} is on {t.device} but the parameters are on "
                    f"{self.weight_ih.device}; move it with .to({self.weight_ih.device}).")

    def _step(self, x, states, backend, reset=None):
        """Checks, layout and dtype; returns the new states (h,) or (h, c)."""
        lstm = self.cell == "lstm"
        self._check(x, states)
        batched = x.dim() == 2
        if not batched:
            x = x.unsqueeze(0)
            states = [s.unsqueeze(0) for s in states]
        if not states:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            states = [zeros, zeros] if lstm else [zeros]
        dtype = cell_autocast_dtype(x.device.type, x.dtype) or x.dtype

        def cast(t):
            return t if t is None or t.dtype == dtype else t.to(dtype)

        # row-major, as the kernels index them (a no-op for torch's own layout)
        weights = [None if w is None else cast(w).contiguous()
                   for w in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)]
        x, states = cast(x).contiguous(), [cast(s).contiguous() for s in states]
        h0, c0 = states[0], (states[1] if lstm else None)

        if backend == "stepwise" and reset is None and one_step_road(x, h0, c0, weights):
            new = cell_step.step(self.cell, x, h0, c0, *weights)
            return new if batched else tuple(s.squeeze(0) for s in new)
        # reset: zero the entering state of those rows, in the step kernel (variants.Variant)
        variant = Variant() if reset is None else Variant(
            keep=(~reset.reshape(-1)).to(state_dtype(dtype)))
        _, h, c = run_layer(self.cell, backend, x, None, h0, c0, (*weights, None), False, variant)
        new = (h, c) if lstm else (h,)
        return new if batched else tuple(s.squeeze(0) for s in new)


class TritonLSTMCell(_TritonCellDriver, nn.LSTMCell):
    """Drop-in `nn.LSTMCell`: `h_1, c_1 = cell(input, (h_0, c_0))`, one fused step per call.

    backend: "auto" | "stepwise" | "torch" | "reference" (see lstm_triton.dispatch); a
    single step has no time loop, so "persistent" gains nothing here, and "auto" runs
    stepwise wherever Triton runs (torch's own cell elsewhere).
    """

    cell = "lstm"

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None,
                reset: Optional[Tensor] = None):
        if torch.jit.is_scripting():  # TorchScript compiles this branch alone (scripting.py)
            if reset is not None:
                raise RuntimeError("lstm_triton: a scripted TritonLSTMCell runs torch's cell, "
                                   "which has no reset; zero hx before the call instead.")
            return scripting.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                       self.bias_hh, self.hidden_size)
        # the common call's shortest road, tried here and not in the shared driver's forward:
        # one frame and a keyword call less, ~1-2 µs of a ~30 µs call (issue 17)
        new = self._one_step(input, hx) if reset is None else None
        return new if new is not None else super().forward(input, hx, reset=reset)

    def _cell_forward(self, input, hx, backend, reset=None):
        if hx is not None and not isinstance(hx, (tuple, list)):
            raise TypeError(f"TritonLSTMCell: hx must be a tuple (h_0, c_0) of Tensors, not "
                            f"{type(hx).__name__}; pass both states as a tuple.")
        if hx is not None and len(hx) != 2:
            raise RuntimeError("TritonLSTMCell expects hx as a tuple (h_0, c_0); pass both.")
        return self._step(input, list(hx) if hx is not None else [], backend, reset)


class TritonGRUCell(_TritonCellDriver, nn.GRUCell):
    """Drop-in `nn.GRUCell`: `h_1 = cell(input, h_0)`, one fused step per call."""

    cell = "gru"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None,
                reset: Optional[Tensor] = None):
        if torch.jit.is_scripting():  # TorchScript compiles this branch alone (scripting.py)
            if reset is not None:
                raise RuntimeError("lstm_triton: a scripted TritonGRUCell runs torch's cell, "
                                   "which has no reset; zero hx before the call instead.")
            return scripting.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                      self.bias_hh, self.hidden_size)
        # the common call's shortest road, tried here and not in the shared driver's forward:
        # one frame and a keyword call less, ~1-2 µs of a ~30 µs call (issue 17)
        new = self._one_step(input, hx) if reset is None else None
        return new if new is not None else super().forward(input, hx, reset=reset)

    def _cell_forward(self, input, hx, backend, reset=None):
        return self._step(input, [hx] if hx is not None else [], backend, reset)[0]
