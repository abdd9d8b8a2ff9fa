"""TritonLSTM and TritonGRU: drop-ins for nn.LSTM / nn.GRU.

They subclass torch's modules, so parameter names, shapes, initialisation
order, state_dict, repr, .to() and isinstance are torch's own; only forward
changes. One driver serves both cells: input layout (batch_first, unbatched,
PackedSequence), checks, autocast, the layer/direction/dropout loop and state
handling. The cell-specific part is which custom op slot carries c.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.nn.utils.rnn import PackedSequence

from . import checks, layer_norm, reference, scripting, variants
from .dispatch import Workload, choose_backend, triton_can_run, validate_backend, warn_fallback
from .export import export_backend, onnx_layers
from .ops import backward_follows, rnn_layer_fast
from .plain_call import plain_call, weight_names
from .quantize import QuantizationGuard
from .schedule import Schedule


def autocast_enabled(device_type) -> bool:
    """torch.is_autocast_enabled, False for "meta" (which it refuses: no autocast there)."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def autocast_dtype(cell, device_type, dtype, packed=False):
    """The dtype nn.LSTM / nn.GRU run in under autocast, or None for no cast.

    On CUDA, torch casts cuDNN RNNs (LSTM and GRU) to float16 whatever the
    autocast dtype (aten/src/ATen/cudnn/AutocastRNN.cpp hard-codes kHalf). On
    the CPU, autocast lists `lstm.input` (cast to the CPU autocast dtype) but
    neither `lstm.data` (the PackedSequence overload) nor `gru`.
    """
    if dtype == torch.float64 or not autocast_enabled(device_type):
        return None
    if device_type == "cuda":
        return torch.float16
    if device_type == "cpu" and cell == "lstm" and not packed:
        return torch.get_autocast_dtype("cpu")
    return None


def allow_dynamo_tracing():
    """Let torch.compile trace our modules: Dynamo refuses every nn.RNN/GRU/LSTM instance
    ("Attempted to wrap RNN, GRU, or LSTM", torch/_dynamo/variables/builder.py) unless
    `allow_rnn` is set, and TritonLSTM/TritonGRU are such instances. Their forward is
    plain Python around custom ops, so it traces cleanly. The flag only lifts that
    refusal; process-wide it also lets Dynamo trace torch's own nn.LSTM (as one aten op)
    instead of breaking the graph there.
    """
    import torch._dynamo.config  # ~1 s the first time; paid when the first module is built

    torch._dynamo.config.allow_rnn = True


def needs_reference(tensors) -> bool:
    """Whether a call needs what only autograd through plain ops gives: forward-mode AD
    (torch.autograd.forward_ad, torch.func.jvp / jacfwd) and functorch's differentiating
    transforms (torch.func.grad / vjp / jacrev / hessian, alone or under vmap). The
    custom op has a backward formula but no forward-mode one, and functorch cannot see
    through it: left to it, jvp returned zero tangents without an error. Such calls run
    the reference layer. torch.func.vmap alone stays on the kernels (ops.py registers
    a batching rule: one op call per vmapped member, lstm_triton/batching.py)."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
        return not _only_vmap_active()
    return forward_ad._current_level >= 0 and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _only_vmap_active() -> bool:
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return all(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


LAYER_NORM_VARIANTS = ("layer_norm=True together with resets, zoneout or recurrent_dropout runs "
                       "on the pure-PyTorch reference backend (the layer-norm kernels take "
                       "none of their masks yet)")

REFERENCE_FOR_AD = ("forward-mode AD and torch.func transforms run on the pure-PyTorch "
                    "reference backend (the Triton ops have no forward-mode formula)")


def run_layer(cell, backend, x, batch_sizes, h0, c0, weights, reverse, variant=variants.NONE,
              ln=None):
    """One layer-direction on `backend`: y (N, P), h_n (B, P), c_n (B, H) or None for GRU.

    weights: (w_ih, w_hh, b_ih, b_hh, w_hr), absent ones None. variant: the per-call
    tensors of resets / recurrent dropout / zoneout (variants.Variant). The layers of
    TritonLSTM/TritonGRU and each call of the cells (a one-step layer) go through here.
    ln: the layer-norm parameters of a `layer_norm=True` layer (lstm_triton.layer_norm).
    """
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    lstm = cell == "lstm"
    h0 = h0.contiguous()
    c0 = c0.contiguous() if lstm else None
    tensors = [x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *(ln or ())]
    if backend != "reference" and needs_reference(tensors):
        warn_fallback(REFERENCE_FOR_AD, key=REFERENCE_FOR_AD)
        backend = "reference"
    if backend == "reference":
        sched = Schedule.build(batch_sizes, x.shape[0], h0.shape[0], reverse)
        return reference.layer(cell, x, sched, h0, c0, weights, variant, ln)
    # A torch.jit.trace records `save` as a constant: record True, so the traced module
    # can also train (and the trace checker, which reruns without grad, sees one graph).
    save = torch.jit.is_tracing() or backward_follows(tensors)
    if ln is not None and variant.active:  # the LN kernels take no resets / zoneout masks yet
        warn_fallback(LAYER_NORM_VARIANTS, key=LAYER_NORM_VARIANTS)
        sched = Schedule.build(batch_sizes, x.shape[0], h0.shape[0], reverse)
        return reference.layer(cell, x, sched, h0, c0, weights, variant, ln)
    if ln is not None:
        return layer_norm.run_layer(cell, backend, x, batch_sizes, h0, c0, weights, ln,
                                    reverse, save)
    y, h_n, c_n, *_ = rnn_layer_fast(
        cell, backend, x, batch_sizes, h0, c0, w_ih.contiguous(), w_hh.contiguous(),
        b_ih, b_hh, w_hr.contiguous() if w_hr is not None else None, reverse, save, *variant)
    return y, h_n, (c_n if lstm else None)


class BackendOption(QuantizationGuard):
    """Mixin: the keyword-only `backend` every Triton module adds to torch's constructor
    (placed before the torch class in the bases, so torch's __init__ runs unchanged)."""

    cell: str  # "lstm" | "gru"

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)

    def _init_backend(self, backend):
        """Also called by lstm_triton.patch, which builds modules without __init__."""
        validate_backend(backend)
        self.backend = backend
        allow_dynamo_tracing()

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


LAYER_NORM_TORCH = ("backend='torch' runs torch's own nn.LSTM / nn.GRU, which has no "
                    "layer-normalised cell; use backend='auto', 'stepwise', 'persistent' or "
                    "'reference' with layer_norm=True.")


class _TritonRNNDriver(BackendOption):
    """Mixin holding the forward shared by TritonLSTM and TritonGRU, and the options beyond
    torch's, keyword-only, whose defaults are exactly nn.LSTM / nn.GRU: `layer_norm`
    (lstm_triton/layer_norm.py) and zoneout / weight_drop / recurrent_dropout /
    variational_dropout (lstm_triton/variants.py)."""

    layer_norm = False  # also what lstm_triton.patch's modules (built without __init__) see
    zoneout = variants.DEFAULTS["zoneout"]  # class-level defaults: see variants.DEFAULTS
    weight_drop = variants.DEFAULTS["weight_drop"]
    recurrent_dropout = variants.DEFAULTS["recurrent_dropout"]
    variational_dropout = variants.DEFAULTS["variational_dropout"]

    def __init__(self, *args, layer_norm=False, zoneout=0.0, weight_drop=0.0,
                 recurrent_dropout=0.0, variational_dropout=False, **kwargs):
        options = variants.check_options(self.cell, zoneout, weight_drop, recurrent_dropout,
                                         variational_dropout)
        super().__init__(*args, **kwargs)
        for name, value in options.items():
            setattr(self, name, value)
        if layer_norm:
            if self.backend == "torch":
                raise ValueError(LAYER_NORM_TORCH)
            self.layer_norm = True
            # registered after torch's own parameters: torch's initialisation draws the
            # same numbers for those under the same seed
            for name, init, size in self._layer_norm_shapes():
                self.register_parameter(name, nn.Parameter(torch.empty(
                    size, device=self.weight_ih_l0.device, dtype=self.weight_ih_l0.dtype)))
            self._reset_layer_norm()

    def _layer_norm_shapes(self):
        """(name, init value, size) of every LN parameter, layer by layer, like torch's."""
        width = self.weight_hh_l0.shape[0]  # G * H
        for layer in range(self.num_layers):
            for direction in range(2 if self.bidirectional else 1):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                yield f"ln_ih_weight{suffix}", 1.0, width
                yield f"ln_hh_weight{suffix}", 1.0, width
                if self.cell == "lstm":
                    yield f"ln_c_weight{suffix}", 1.0, self.hidden_size
                    yield f"ln_c_bias{suffix}", 0.0, self.hidden_size

    def _reset_layer_norm(self):
        with torch.no_grad():
            for name, init, _ in self._layer_norm_shapes():
                getattr(self, name).fill_(init)

    def reset_parameters(self):
        super().reset_parameters()  # torch's uniform init of every parameter, then LN's own
        if self.layer_norm:
            self._reset_layer_norm()

    def extra_repr(self):
        return (super().extra_repr() + (", layer_norm=True" if self.layer_norm else "")
                + variants.options_repr(self))

    def _layer_norm_weights(self, layer, direction):
        if not self.layer_norm:
            return None
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        names = ("ln_ih_weight", "ln_hh_weight") + (
            ("ln_c_weight", "ln_c_bias") if self.cell == "lstm" else ())
        return tuple(getattr(self, name + suffix) for name in names)

    def torch_twin_runs(self, resets=None) -> bool:
        """Whether torch's own module computes what this call does: False when an option
        torch has no cell for is on (layer_norm, zoneout, resets, and in training
        weight_drop / recurrent_dropout / variational_dropout). Exports and TorchScript key
        on it."""
        return not self.layer_norm and not variants.needs_kernels_of_this_project(self, resets)

    def __prepare_scriptable__(self):
        """torch.jit.script runs torch's kernels (scripting.py): refuse, at script time,
        a module whose options those kernels cannot compute, rather than script wrong math."""
        if not self.torch_twin_runs():
            raise RuntimeError(
                f"lstm_triton: {type(self).__name__} cannot be scripted with layer_norm=True or "
                f"zoneout: TorchScript runs torch's own LSTM/GRU kernels, which have no such "
                f"cells; use torch.jit.trace or torch.export (they record plain torch ops).")
        return self

    def forward(self, input, hx=None, *, resets=None):
        backend = export_backend(self, resets)  # exported or traced: aten ops (export.py)
        if backend == "torch":
            lowered = onnx_layers(self, input, hx)
            return lowered if lowered is not None else super(BackendOption, self).forward(input, hx)
        if backend is None and resets is None:
            out = plain_call(self, input, hx)  # the common call's shortest road (issue 17)
            if out is not None:
                return out
        return self._run(input, hx, resets, backend)

    def _layer_weights(self, layer, direction):
        # by name, each call: torch.func.functional_call swaps parameters in place of these
        # names and WeightDrop-style wrappers set plain tensors there, neither of which
        # nn.RNNBase's _flat_weights follows until torch's own forward refreshes it.
        # `_parameters` first: what getattr finds for a registered name (functional_call
        # swaps the entry there), without nn.Module.__getattr__'s ~1.2 µs a name (issue 17);
        # a name not registered (a wrapper's plain tensor) is read as an attribute.
        n_dir = 2 if self.bidirectional else 1
        names = weight_names(self.num_layers, n_dir, self.bias,
                             getattr(self, "proj_size", 0) > 0)[layer * n_dir + direction]
        params = self._parameters

        def get(name):
            found = params.get(name)
            return found if found is not None else getattr(self, name, None)
        return tuple(None if name is None else get(name) for name in names)

    def _run(self, input, hx, resets=None, backend=None):
        name = type(self).__name__
        lstm = self.cell == "lstm"
        packed = isinstance(input, PackedSequence)
        weight = self.weight_ih_l0
        if packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            batched = True
        else:
            x, batch_sizes, sorted_indices, unsorted_indices = input, None, None, None
            batched = x.dim() == 3
        # Under autocast torch accepts any floating input and state dtype (RNNBase.check_input
        # skips the dtype check): the layers then run in one dtype, chosen below.
        autocasting = autocast_enabled(x.device.type)
        checks.check_input(name, x, self.input_size, x.dtype if autocasting else weight.dtype,
                           packed, RuntimeError if (packed and lstm) else ValueError)
        resets = variants.check_resets(name, resets, x, batched, self.batch_first, packed)
        if not packed:
            if not batched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
            checks.check_length(x.shape[0])
        if not packed:
            batch = x.shape[1]
        elif sorted_indices is not None:  # its length is static: torch.compile needs no guard
            batch = sorted_indices.shape[0]
        else:
            batch = self._packed_batch(batch_sizes, hx)

        cast = autocast_dtype(self.cell, x.device.type, x.dtype, packed) if autocasting else None
        # With no cast rule, autocast still lets the input's dtype differ from the weights':
        # torch then mostly answers in the input's dtype, so the layers run in it.
        dtype = cast or x.dtype
        workload = None  # only "auto" looks at the call's shape (and walks the parameters)
        if self.backend == "auto":
            seq_len = batch_sizes.shape[0] if packed else x.shape[0]
            workload = Workload(self.cell, dtype, batch, self.hidden_size, seq_len,
                                self._needs_grad(x, hx))
        backend = backend or choose_backend(self.backend, x.device, workload)
        if backend == "torch" and not self.torch_twin_runs(resets):  # torch has no such cell
            if self.backend == "torch":
                raise ValueError(
                    f"{name}: backend='torch' runs torch's own forward, which has no layer norm, "
                    f"resets, zoneout, weight_drop, recurrent_dropout or variational_dropout; "
                    f"use backend='auto', 'stepwise', 'persistent' or 'reference'.")
            backend = "stepwise" if triton_can_run(x.device) else "reference"
        if backend == "torch":  # torch's own forward on the same parameters (cuDNN on CUDA)
            return super(BackendOption, self).forward(input, hx)

        n_dir = 2 if self.bidirectional else 1
        proj = getattr(self, "proj_size", 0)
        out_size = proj if proj > 0 else self.hidden_size
        h_shape = (self.num_layers * n_dir, batch, out_size)
        c_shape = (self.num_layers * n_dir, batch, self.hidden_size)
        states = self._initial_states(hx, batched, packed, x, h_shape, c_shape, lstm,
                                      autocasting)
        if packed and sorted_indices is not None:
            states = [s.index_select(1, sorted_indices) for s in states]

        weight_cast = dtype if dtype != weight.dtype else None
        rows = x.reshape(-1, x.shape[-1]) if not packed else x
        # .to of the same dtype costs ~1 µs a tensor even as a no-op (issue 17)
        rows = (rows if rows.dtype == dtype else rows.to(dtype)).contiguous()
        states = [s if s.dtype == dtype else s.to(dtype) for s in states]

        if not packed and batch == 0:  # a PackedSequence always holds a sequence
            # nothing to run, but as in torch the (empty) outputs are new tensors of the
            # autograd graph, so a backward gives zero gradients instead of an error
            anchor = 0 * sum(t.sum() for t in [rows, *states, *self.parameters()])
            out = rows.new_zeros(rows.shape[0], n_dir * out_size) + anchor
            finals = [s + anchor for s in states]
        else:
            out, finals = self._layers(rows, batch_sizes, states, backend, weight_cast, resets)

        if packed:
            output = PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                finals = [s.index_select(1, unsorted_indices) for s in finals]
        else:
            output = out.view(x.shape[0], batch, out.shape[-1])
            if not batched:
                output = output.squeeze(1)
                finals = [s.squeeze(1) for s in finals]
            elif self.batch_first:
                output = output.transpose(0, 1)
        return output, (tuple(finals) if lstm else finals[0])

    def _needs_grad(self, x, hx):
        """Whether a backward will follow: what auto's training / inference choice keys on."""
        if not torch.is_grad_enabled():
            return False
        states = [] if hx is None else (list(hx) if isinstance(hx, (tuple, list)) else [hx])
        # the module's own parameters (it has no submodules): nn.Module.parameters()'s walk
        # with its memo set cost ~3 µs more a call (issue 17)
        params = self._parameters.values() if not self._modules else self.parameters()
        return x.requires_grad or any(t.requires_grad for t in [*states, *params]
                                      if t is not None)

    def _packed_batch(self, batch_sizes, hx):
        """Batch of a sorted PackedSequence (no sorted_indices). Given states fix it
        statically; its agreement with batch_sizes[0] is then a runtime check, which
        torch.compile can keep (it cannot guard a shape on batch_sizes' values)."""
        first = None if hx is None else (hx[0] if isinstance(hx, (tuple, list)) else hx)
        if first is None or first.dim() != 3:
            return int(batch_sizes[0])
        batch = first.shape[1]
        message = (f"the states hold a batch of {batch} but the PackedSequence a different one "
                   f"(batch_sizes[0]): give states of shape (num_layers * num_directions, "
                   f"batch_sizes[0], hidden).")
        torch._check(int(batch_sizes[0]) == batch, lambda: message)  # kept by torch.compile
        return batch

    def _initial_states(self, hx, batched, packed, x, h_shape, c_shape, lstm, autocasting):
        if hx is None:
            zeros = lambda shape: x.new_zeros(shape)  # noqa: E731
            return [zeros(h_shape), zeros(c_shape)] if lstm else [zeros(h_shape)]
        states = list(hx) if lstm else [hx]
        if lstm and len(states) != 2:  # torch indexes hx[1] first: IndexError when missing
            raise (IndexError if len(states) < 2 else RuntimeError)(
                f"LSTM expects hx as a tuple (h_0, c_0) of two states, got {len(states)}; "
                f"pass both states.")
        checks.check_state_dims("hx and cx" if lstm else "hx", states, batched, packed)
        if not batched:
            states = [s.unsqueeze(1) for s in states]
        labels = ("hidden[0]", "hidden[1]") if lstm else ("hidden",)
        for label, s, shape in zip(labels, states, (h_shape, c_shape)):
            # under autocast, states of another dtype are converted like the input
            checks.check_state(label, s, shape, s.dtype if autocasting else x.dtype)
        checks.check_device(x, self.weight_ih_l0, *states)
        return states

    def _layers(self, rows, batch_sizes, states, backend, cast, resets=None):
        lstm = self.cell == "lstm"
        n_dir = 2 if self.bidirectional else 1
        h_all, c_all = [], []
        layer_input = rows
        batch = states[0].shape[1]
        keeps = [None if resets is None else variants.keep_rows(resets, d == 1, rows.dtype)
                 for d in range(n_dir)]  # the same reset positions in every layer
        for layer in range(self.num_layers):
            outs = []
            for direction in range(n_dir):
                k = layer * n_dir + direction
                weights = [w.to(cast) if (cast is not None and w is not None) else w
                           for w in self._layer_weights(layer, direction)]
                ln = self._layer_norm_weights(layer, direction)
                if ln is not None and cast is not None:
                    ln = tuple(w.to(cast) for w in ln)
                h0 = states[0][k]
                c0 = states[1][k] if lstm else None
                w_hh, variant = variants.layer_variant(
                    self, keeps[direction], weights[1], rows.shape[0], batch, self.hidden_size,
                    h0.shape[-1], rows)
                weights[1] = w_hh
                y, h_n, c_n = run_layer(self.cell, backend, layer_input, batch_sizes, h0, c0,
                                        weights, direction == 1, variant, ln)
                outs.append(y)
                h_all.append(h_n)
                c_all.append(c_n)
            layer_input = torch.cat(outs, dim=1) if n_dir == 2 else outs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = variants.inter_layer_dropout(self, layer_input, batch_sizes, batch)
        finals = [torch.stack(h_all)] + ([torch.stack(c_all)] if lstm else [])
        return layer_input, finals


class TritonLSTM(_TritonRNNDriver, nn.LSTM):
    """Drop-in `nn.LSTM` on Triton kernels.

    Same constructor (plus keyword-only `backend`), parameters, state_dict and
    forward contract as `torch.nn.LSTM`: `output, (h_n, c_n) = lstm(input, (h_0, c_0))`.
    backend: "auto" | "stepwise" | "persistent" | "torch" | "reference" (see
    lstm_triton.dispatch; "torch" runs nn.LSTM's own forward, i.e. cuDNN on CUDA).
    """

    cell = "lstm"

    # resets is not keyword-only here, as the driver's is: TorchScript refuses keyword-only
    # arguments with defaults, and compiles this signature.
    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None,
                resets: Optional[Tensor] = None):
        if torch.jit.is_scripting():  # TorchScript compiles this branch alone (scripting.py)
            if resets is not None:
                raise RuntimeError("lstm_triton: a scripted TritonLSTM runs torch's LSTM, which "
                                   "has no resets; use torch.jit.trace or torch.export.")
            return scripting.lstm(input, hx, self._flat_weights, self.bias, self.num_layers,
                                  float(self.dropout), self.training, self.bidirectional,
                                  self.batch_first, self.hidden_size, self.proj_size)
        return super().forward(input, hx, resets=resets)


class TritonGRU(_TritonRNNDriver, nn.GRU):
    """Drop-in `nn.GRU` on Triton kernels: `output, h_n = gru(input, h_0)`."""

    cell = "gru"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None,
                resets: Optional[Tensor] = None):
        if torch.jit.is_scripting():  # TorchScript compiles this branch alone (scripting.py)
            if resets is not None:
                raise RuntimeError("lstm_triton: a scripted TritonGRU runs torch's GRU, which "
                                   "has no resets; use torch.jit.trace or torch.export.")
            return scripting.gru(input, hx, self._flat_weights, self.bias, self.num_layers,
                                 float(self.dropout), self.training, self.bidirectional,
                                 self.batch_first, self.hidden_size)
        return super().forward(input, hx, resets=resets)
