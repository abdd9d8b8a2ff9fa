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


class Constants(dict):
    """Keyword arguments (constexprs and launch options) that a launcher passes unchanged call
    after call, built once with the tuple that keys them: a persistent launch rebuilt ~25 of
    them from its plan and hashed them into its cache key on every call (issue 17). Never
    changed after it is made (launchers memoise one per plan and flags)."""

    __slots__ = ("key",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = tuple(self.items())


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
        """kernel[grid](*args, **kwargs), skipping Triton's runtime where it may."""
        return self.launch_with(grid, args, kwargs)

    def launch_with(self, grid, args, constants):
        """kernel[grid](*args, **constants); `constants` a dict, or a Constants made once
        (its cache key is then not rebuilt: see Constants)."""
        guard = _device_guard(args[0]) if args else _NO_GUARD
        if guard is _NO_GUARD:
            return self._launch(grid, args, constants)
        with guard:
            return self._launch(grid, args, constants)

    def _shortcut(self, grid, args):
        """Whether a launch may skip Triton's runtime (the module docstring's conditions)."""
        return (self.fast and len(args) == self.n_args and not callable(grid)
                and not _hooked(knobs.runtime.launch_enter_hook)
                and not _hooked(knobs.runtime.launch_exit_hook))

    def _launch(self, grid, args, kwargs):
        found = self._lookup(grid, args, kwargs)
        if found is None:
            return self.fn[grid](*args, **kwargs)
        device, key, entry = found
        if entry is None:
            compiled = self.fn[grid](*args, **kwargs)  # Triton's path: compile, cache, launch
            self._remember(key, compiled, kwargs)
            return compiled
        run, function, metadata, consts = entry
        run(*_grid3(grid), driver.active.get_current_stream(device), function, metadata, None,
            None, None, *args, *consts)
        return None

    def _lookup(self, grid, args, kwargs):
        """(device, cache key, cached entry or None) of a launch the shortcut may take, or
        None where Triton's runtime must serve it."""
        if not self._shortcut(grid, args):
            return None
        try:
            specs = _key(args)
        except TypeError:
            return None
        device = driver.active.get_current_device()
        named = kwargs.key if kwargs.__class__ is Constants else tuple(kwargs.items())
        key = (device, named, specs)
        return device, key, self.cache.get(key)

    def _remember(self, key, compiled, kwargs):
        """Cache what launching `compiled` takes; returns the entry (None if it cannot)."""
        if hasattr(compiled, "result"):  # Triton 3.6's asynchronous compile mode
            compiled = compiled.result()
        if compiled is None:
            return None
        run = compiled.run  # loads the binary (sets .function) if nothing launched it yet
        if compiled.function is None:
            return None
        consts = tuple(kwargs[name] if name in kwargs else default
                       for name, default in self.constexprs)
        if len(self.cache) >= MAX_ENTRIES:
            self.cache.clear()
        entry = self.cache[key] = (run, compiled.function, compiled.packed_metadata, consts)
        return entry

    def stepper(self, grid, args, kwargs, varying, largest):
        """A function `step(*values)` that launches the kernel on `args` with the arguments at
        positions `varying` replaced by `values`: a time loop whose launches differ only in
        a few integers (a step's rows). Those must be parameters the kernel never
        specialises on (do_not_specialize; checked) and, all of them, at most `largest`
        (below 2**31: one integer type). Then every step has the specialisation of `args`,
        whose compiled kernel is found (or compiled, without launching) once, here, and a
        step costs one call of Triton's launcher: no key, no lookup, no stream query.
        Where the shortcut does not hold (the interpreter, hooks, another device) each step
        is a plain launch."""
        names = getattr(self.fn, "arg_names", [])
        free = _unspecialised(self.fn)
        fixed = [names[i] for i in varying if names[i] not in free]
        if fixed:
            raise ValueError(f"{self.fn.__name__}: {fixed} are specialised on their values; "
                             "list them in the kernel's do_not_specialize")
        full = list(args)

        def plain(*values):
            for i, value in zip(varying, values):
                full[i] = value
            self.launch(grid, *full, **kwargs)

        found = None
        if largest < 2**31 and _device_guard(full[0]) is _NO_GUARD:
            found = self._lookup(grid, full, kwargs)
        if found is None:
            return plain
        device, key, entry = found
        if entry is None:
            entry = self._remember(key, self.fn.warmup(*full, grid=grid, **kwargs), kwargs)
            if entry is None:
                return plain
        run, function, metadata, consts = entry
        head = (*_grid3(grid), driver.active.get_current_stream(device), function, metadata,
                None, None, None)

        def step(*values):
            for i, value in zip(varying, values):
                full[i] = value
            run(*head, *full, *consts)
        return step


def _grid3(grid):
    """A grid tuple of one to three sizes as the launcher takes it: three."""
    size = len(grid)
    return grid[0], grid[1] if size > 1 else 1, grid[2] if size > 2 else 1


def _unspecialised(fn):
    """Names of the parameters `fn` (a JITFunction, or the interpreter's stand-in) never
    specialises on the value of."""
    names = getattr(fn, "arg_names", [])
    listed = getattr(fn, "do_not_specialize", None)
    if listed is None:  # InterpretedFunction keeps @triton.jit's keywords
        listed = getattr(fn, "kwargs", {}).get("do_not_specialize") or []
    return {names[p] if isinstance(p, int) else p for p in listed}


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
