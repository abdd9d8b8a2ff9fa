"""Launching a compiled kernel with prepared arguments, skipping Triton's binder per launch.

`kernel[grid](*args, **constexprs)` runs Triton's JIT runtime every time: it binds the
arguments to the signature, specialises each one (dtype, 16-byte alignment, integers
equal to 1 or divisible by 16), hashes that into a cache key, checks the kernel's globals
and builds launch metadata: 28-36 µs of host time per launch on Triton 3.6 (issue 17),
while the stepwise backend launches one kernel per timestep.

`prepared(kernel)[grid](*args, **constexprs)` is the same call. The first launch of each
specialisation goes through Triton's own path (which compiles, caches and launches, and
returns the CompiledKernel); later ones look the CompiledKernel up by a key computed here
from the same facts Triton specialises on, and call its launcher directly, exactly as
Triton's runtime does (`CompiledKernel.run(grid, stream, function, packed_metadata,
launch_metadata, enter_hook, exit_hook, *bound_args)`, the same in Triton 3.6 and 3.9).

Triton's path is kept whenever this shortcut could differ from it: under the
interpreter, with launch hooks installed (profilers: they read launch metadata), a callable
grid, a constexpr that is not trailing, or an argument of a type the key does not know.
"""
import contextlib
import functools

import torch
from triton import knobs
from triton.runtime import driver
from triton.runtime.jit import JITFunction

_PLAIN = (torch.Tensor, torch.nn.Parameter)
MAX_ENTRIES = 4096  # per kernel; a process that sees more shapes starts the cache afresh


def _key(args):
    """A hashable key at least as fine as what Triton specialises on: a tensor by its dtype
    and 16-byte alignment, an integer by its value (finer than Triton, which keys on == 1,
    % 16 and its range: one Triton launch more per new value, never a wrong kernel), a bool
    or float by its value, None as itself, all under the tuple of the arguments' types.
    Anything else (a tensor subclass, a descriptor) raises TypeError: Triton's path serves
    it. The per-argument work is a function generated once per tuple of types (`_keyer`),
    a few µs for a step kernel's ~25 arguments where a loop over them took ~10 (issue 17)."""
    types = tuple(map(type, args))
    keyer = _KEYERS.get(types)
    if keyer is None:
        keyer = _KEYERS[types] = _keyer(types)
    return keyer(args)


_KEYERS = {}  # tuple of argument types -> its key function


def _keyer(types):
    parts = []
    for i, cls in enumerate(types):
        if cls in _PLAIN:
            parts.append(f"a[{i}].dtype, a[{i}].data_ptr() & 15 == 0")
        elif cls in (int, bool, float):
            parts.append(f"a[{i}]")
        elif cls is type(None):
            continue
        else:
            def refuse(args, cls=cls):
                raise TypeError(cls)
            return refuse
    # the types tuple itself leads the key: True and 1 (or 1.0) hash alike, and a None's
    # position must count
    return eval(f"lambda a: (types, {', '.join(parts)})", {"types": types})  # noqa: S307


def _hooked(hook) -> bool:
    """Whether a launch hook would do anything. Triton >= 3.6 always passes its launcher a
    HookChain, empty unless a profiler added to it; an empty chain calls nothing, so the
    shortcut passes None for it and for the launch metadata only such a hook reads."""
    return hook is not None and bool(getattr(hook, "calls", True))


class PreparedKernel:
    """A @triton.jit kernel whose launches reuse the compiled kernel by specialisation."""

    def __init__(self, fn):
        self.fn = fn
        params = getattr(fn, "params", [])
        first = next((k for k, p in enumerate(params) if p.is_constexpr), len(params))
        # only kernels whose constexprs all follow the runtime arguments: then the
        # arguments Triton binds are the positional ones followed by the constexprs
        self.fast = (isinstance(fn, JITFunction)
                     and all(p.is_constexpr for p in params[first:]))
        self.n_args = first
        self.constexprs = [(p.name, p.default if p.has_default else None) for p in params[first:]]
        self.cache = {}  # (device, constexprs and options, argument specs) -> launch

    def __getitem__(self, grid):
        return functools.partial(self.launch, grid)

    def launch(self, grid, *args, **kwargs):
        guard = _device_guard(args[0]) if args else _NO_GUARD
        if guard is _NO_GUARD:
            return self._launch(grid, args, kwargs)
        with guard:
            return self._launch(grid, args, kwargs)

    def _launch(self, grid, args, kwargs):
        if (not self.fast or len(args) != self.n_args or callable(grid)
                or _hooked(knobs.runtime.launch_enter_hook)
                or _hooked(knobs.runtime.launch_exit_hook)):
            return self.fn[grid](*args, **kwargs)
        try:
            specs = _key(args)
        except TypeError:
            return self.fn[grid](*args, **kwargs)
        device = driver.active.get_current_device()
        key = (device, tuple(kwargs.items()), specs)
        entry = self.cache.get(key)
        if entry is None:
            compiled = self.fn[grid](*args, **kwargs)  # Triton's path: compile, cache, launch
            if hasattr(compiled, "result"):  # Triton 3.6's asynchronous compile mode
                compiled = compiled.result()
            consts = tuple(kwargs[name] if name in kwargs else default
                           for name, default in self.constexprs)
            if compiled is not None and compiled.function is not None:
                if len(self.cache) >= MAX_ENTRIES:
                    self.cache.clear()
                self.cache[key] = (compiled.run, compiled.function, compiled.packed_metadata,
                                   consts)
            return compiled
        run, function, metadata, consts = entry
        stream = driver.active.get_current_stream(device)
        size = len(grid)
        run(grid[0], grid[1] if size > 1 else 1, grid[2] if size > 2 else 1, stream, function,
            metadata, None, None, None, *args, *consts)
        return None


_NO_GUARD = contextlib.nullcontext()


def _device_guard(first):
    """The CUDA device a launch must be made on, as a context: Triton launches on the
    *current* device, so a layer whose tensors live on another GPU (a model split over
    GPUs, DataParallel's replicas) would have its pointers read on the wrong one (an
    illegal address). torch's own ops guard themselves; Triton's launches do not
    (flash-linear-attention's input_guard does the same). Every kernel here takes a
    tensor of the layer as its first argument."""
    if first.__class__ in _PLAIN and first.is_cuda:
        index = first.get_device()
        if index != torch.cuda.current_device():
            return torch.cuda.device(index)
    return _NO_GUARD


_PREPARED = {}  # kernel -> its PreparedKernel, for the life of the process


def prepared(fn) -> PreparedKernel:
    """The PreparedKernel of `fn`: one per kernel, so its launches share one cache."""
    # keyed by id: hashing a JITFunction computes its source's cache key (µs per launch);
    # the PreparedKernel keeps `fn` alive, so its id is never reused
    kernel = _PREPARED.get(id(fn))
    if kernel is None:
        kernel = _PREPARED[id(fn)] = PreparedKernel(fn)
    return kernel
