"""What only a GPU can show: the persistent kernel with many programs meeting at the grid
barrier, native fp16/bf16 tensor-core dots, two persistent launches at once, and CUDA graph
capture and replay.

Skipped without CUDA (the CPU interpreter runs one program per launch, so the
barrier never has anyone to wait for there). NOT YET RUN: no GPU has been lent to
this project so far; the first GPU session runs it with scripts/gpu_run.sh.
"""
import threading
import warnings

import pytest
import torch
from rnn_testing import (DEVICE, as_tuple, assert_close, assert_runs_close, outputs_and_grads,
                         twin_modules)

from lstm_triton import FallbackWarning

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA")]


def run_without_fallback(module, x):
    """Forward + backward; fails if the persistent kernel fell back to stepwise."""
    weights = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # a fallback warns: make it fail
        out, finals = module(x)
        weights = [torch.randn_like(out, dtype=torch.float64)] + [
            torch.randn_like(f, dtype=torch.float64) for f in as_tuple(finals)]
    return weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("hidden", [256, 768])
@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm-proj"])
def test_many_program_persistent_matches_torch(cell, hidden, dtype):
    """H=256/768 spreads the hidden units over many programs: every step really waits at
    the grid barrier (twice with a projection, P = H/2 columns spread over the programs
    too). Forward and every gradient against float64 torch."""
    extra = {"proj_size": hidden // 2} if cell == "lstm-proj" else {}
    module, oracle = twin_modules(cell.removesuffix("-proj"), 64, hidden, dtype=dtype,
                                  backend="persistent", **extra)
    check_without_fallback(module, oracle, torch.randn(33, 8, 64, dtype=dtype), dtype)


def check_without_fallback(module, oracle, x, dtype):
    """Forward and every gradient of `module` on x, no fallback to stepwise, against the
    float64 `oracle`."""
    x = x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    weights = run_without_fallback(module, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        out, finals, grads = outputs_and_grads(module, x, None, weights, [x])
    assert_runs_close((out, finals, grads),
                      outputs_and_grads(oracle, x64, None, weights, [x64]), dtype)


@pytest.mark.parametrize("option", ["tags", "narrow", "narrow+tags", "chain16"])
@pytest.mark.parametrize("hidden", [256, 768, 1024])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_many_program_plan_options_match_torch(cell, hidden, option, monkeypatch):
    """Issue 16's options where the interpreter cannot go: many programs exchanging h_t through
    the step tags (each consumer polls every program's tag), the narrow forward's 32 to 128
    programs of 8 units with its transposed dot, both together, and split K. bf16, forward
    and every gradient against float64 torch, no fallback."""
    from lstm_triton.kernels import persistent_config
    monkeypatch.setattr(persistent_config, "PLAN_OPTION", persistent_config.PLAN_OPTIONS[option])
    module, oracle = twin_modules(cell, 64, hidden, dtype=torch.bfloat16, backend="persistent")
    check_without_fallback(module, oracle, torch.randn(33, 16, 64, dtype=torch.bfloat16),
                           torch.bfloat16)


@pytest.mark.parametrize("cooperative", [True, False], ids=["cooperative", "plain"])
@pytest.mark.parametrize("hidden", [1024, 2048])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_two_persistent_launches_at_once_finish_and_are_right(cell, hidden, cooperative,
                                                              monkeypatch):
    """Two threads launch persistent kernels on two streams at the same time: H=1024 (two
    64-program grids, which fit side by side) and H=2048 (two 128-program grids, which do
    not). They must both finish (the barrier is bounded: at worst one falls back to
    stepwise, with a warning) and both be right. Cooperative launches (the default) must
    not fall back at all: the driver starts each grid only when all of it is resident."""
    from lstm_triton.kernels import persistent_config
    monkeypatch.setattr(persistent_config, "COOPERATIVE", cooperative)
    module, oracle = twin_modules(cell, 128, hidden, dtype=torch.float16, backend="persistent")
    xs = [torch.randn(256, 16, 128, dtype=torch.float16) for _ in range(2)]
    results, errors, fallbacks = [None, None], [], []
    start = threading.Barrier(2)

    def work(k):
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FallbackWarning)
                start.wait()
                with torch.no_grad():
                    results[k] = module(xs[k])[0]
                stream.synchronize()
            fallbacks.extend(str(w.message) for w in caught)
        except Exception as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a persistent launch hung"
    assert not errors, errors
    for x, out in zip(xs, results):
        with torch.no_grad():
            expected = oracle(x.double())[0]
        assert_close(out, expected, torch.float16, "output")
    print(f"{cell} H={hidden} cooperative={cooperative}: fallbacks {fallbacks}")
    if cooperative:
        assert not fallbacks, fallbacks


def test_cuda_kernels_are_deterministic_at_scale():
    """No atomics in any reduction: the same bits twice, stepwise and persistent."""
    for backend in ("stepwise", "persistent"):
        module, _ = twin_modules("lstm", 64, 512, dtype=torch.bfloat16, backend=backend)
        x = torch.randn(64, 16, 64, dtype=torch.bfloat16, requires_grad=True)

        def run():
            out, (h, c) = module(x)
            return [out, h, c, *torch.autograd.grad(out.float().pow(2).sum(),
                                                     [x, *module.parameters()])]

        for a, b in zip(run(), run()):
            assert torch.equal(a, b), backend


@pytest.mark.parametrize("backend", ["persistent", "stepwise"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inference_replays_in_a_cuda_graph(cell, backend):
    """Capture a no-grad call (padded, then packed), replay it on new inputs copied into the
    captured ones: the same bits as an eager call (tests/test_graph_capture.py says what
    changes under capture). Compared within bf16's tolerance, not bit for bit: cuBLAS may
    pick another GEMM algorithm for the input projection on a capturing stream."""
    from torch.nn.utils.rnn import pack_padded_sequence

    module, _ = twin_modules(cell, 64, 256, dtype=torch.bfloat16, backend=backend)
    lengths = torch.tensor([40, 40, 31, 17, 9, 9, 5, 1])
    for packed in (False, True):
        def batch(x):  # packed outside the capture: the capture is of our call only
            return pack_padded_sequence(x, lengths) if packed else x

        static = batch(torch.randn(40, 8, 64, dtype=torch.bfloat16))

        def call():
            out, finals = module(static)
            return (out.data if packed else out,) + as_tuple(finals)

        side = torch.cuda.Stream()  # warm up (compile, allocate) outside the capture
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", FallbackWarning)
            with torch.cuda.graph(graph):
                captured = call()
        for _ in range(2):
            static.data.copy_(batch(torch.randn(40, 8, 64, dtype=torch.bfloat16)).data)
            graph.replay()
            with torch.no_grad():
                eager = call()
            for got, want in zip(captured, eager):
                assert_close(got, want, torch.bfloat16, f"{cell} {backend} packed={packed}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_step_graphed_with_make_graphed_callables(cell):
    """torch.cuda.make_graphed_callables captures the persistent forward and backward: the
    graphed module's outputs and gradients equal the eager module's (within bf16's
    tolerance: the weight-gradient GEMMs are cuBLAS's, whose algorithm may differ)."""
    module, _ = twin_modules(cell, 64, 256, dtype=torch.bfloat16, backend="persistent")
    x = torch.randn(40, 8, 64, dtype=torch.bfloat16, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(module, (x,))

    def step(fn):
        out, finals = fn(x)
        loss = out.float().pow(2).sum() + sum(f.float().sum() for f in as_tuple(finals))
        return [out, *as_tuple(finals), *torch.autograd.grad(loss, [x, *module.parameters()])]

    for _ in range(2):
        x.data.copy_(torch.randn_like(x))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FallbackWarning)
            got = step(graphed)
        want = step(module)
        for a, b in zip(got, want):
            assert_close(a, b, torch.bfloat16, cell)


def test_failed_barrier_inside_a_cuda_graph_gives_nan(monkeypatch):
    """A captured launch whose barrier fails cannot fall back: its outputs are NaN."""
    from lstm_triton.kernels import grid_sync, persistent_lstm

    module, _ = twin_modules("lstm", 64, 256, dtype=torch.bfloat16, backend="persistent")
    x = torch.randn(16, 8, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        module(x)  # compile outside the capture
        monkeypatch.setattr(persistent_lstm, "new_sync_state", grid_sync.failed_sync_state)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, (h, c) = module(x)
    graph.replay()
    assert out.isnan().all() and h.isnan().all() and c.isnan().all()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepwise_calls_replay_from_cuda_graphs(cell, monkeypatch):
    """lstm_triton/graphs.py on a real GPU: the first stepwise call of a key runs plainly and
    captures, later ones replay. Training steps with fresh inputs and an optimizer step
    between them (weights changed in place) equal plain calls within float32's tolerance
    (cuBLAS may pick another GEMM algorithm on a capturing stream), and a replayed no-grad
    call at T=256 costs the host a fraction of a plain one (the point of issue 17)."""
    import time

    from lstm_triton import graphs

    monkeypatch.setattr(graphs, "ENABLED", True)  # opt-in; restored after the test
    graphs.clear()
    module, _ = twin_modules(cell, 32, 64, dtype=torch.float32, backend="stepwise")
    opt = torch.optim.SGD(module.parameters(), lr=0.1)

    def step(x):
        module.zero_grad()
        x = x.detach().requires_grad_()
        out, finals = module(x)
        loss = out.pow(2).sum() + sum(f.sin().sum() for f in as_tuple(finals))
        loss.backward()
        return [out.detach(), *as_tuple(finals), x.grad,
                *(p.grad.clone() for p in module.parameters())]

    for _ in range(3):
        x = torch.randn(16, 4, 32, device="cuda")
        with warnings.catch_warnings():
            warnings.simplefilter("error", FallbackWarning)
            got = step(x)
        graphs.ENABLED = False
        try:
            want = step(x)
        finally:
            graphs.ENABLED = True
        for a, b in zip(got, want):
            assert_close(a, b, torch.float32, cell)
        opt.step()
    assert len(graphs._graphs) == 2  # forward and backward: one graph each, replayed

    x = torch.randn(256, 4, 32, device="cuda")

    def host_seconds(enabled, calls=5):
        graphs.ENABLED = enabled
        try:
            with torch.no_grad():
                module(x)  # first use (captures when enabled)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(calls):
                    module(x)
                host = (time.perf_counter() - start) / calls
                torch.cuda.synchronize()
            return host
        finally:
            graphs.ENABLED = True

    replayed, plain = host_seconds(True), host_seconds(False)
    print(f"stepwise {cell} T=256 host per call: replayed {replayed * 1e6:.0f} us, "
          f"plain {plain * 1e6:.0f} us")
    assert replayed < plain / 4, (replayed, plain)
    graphs.clear()


def counted(monkeypatch, module, name):
    """The calls of module.name from here to the test's end, one entry each."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: (calls.append(1), original(*a))[1])
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("batch, hidden", [(1, 7), (5, 64), (32, 256)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_cell_step_matches_torch_on_many_programs(cell, batch, hidden, dtype, monkeypatch):
    """kernels/cell_fused.py where the interpreter cannot go: H/16 programs, each with its
    own 16 units of every gate, native half-precision dots. A TritonLSTMCell / TritonGRUCell
    call (the fused road at these sizes) against torch's cell in float64, forward and every
    gradient of a few chained steps."""
    from lstm_triton import TritonGRUCell, TritonLSTMCell, cell_step
    from lstm_triton.kernels import config

    assert config.fused_cell_launch(batch, 48, hidden, dtype) is not None
    torch.manual_seed(0)
    cls, ref_cls = ((TritonLSTMCell, torch.nn.LSTMCell) if cell == "lstm"
                    else (TritonGRUCell, torch.nn.GRUCell))
    ref = ref_cls(48, hidden).cuda().double()
    ours = cls(48, hidden, backend="stepwise").cuda().to(dtype)
    ours.load_state_dict(ref.state_dict())
    xs = [torch.randn(batch, 48, device="cuda", dtype=torch.float64) for _ in range(3)]

    def run(module, dt):
        state = None
        inputs = [x.to(dt).requires_grad_() for x in xs]
        outs = []
        for x in inputs:
            state = module(x, state)
            outs.append(state[0] if cell == "lstm" else state)
        loss = sum((o.double() * (k + 1)).sin().sum() for k, o in enumerate(outs))
        loss.backward()
        return outs, [x.grad for x in inputs] + [p.grad for p in module.parameters()]

    launched = counted(monkeypatch, cell_step, f"{cell}_cell_fused")
    got = run(ours, dtype)
    assert len(launched) == 3
    want = run(ref, torch.float64)
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        assert_close(g, w.to(g.dtype), dtype, f"fused {cell} cell")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("batch, hidden, lengths", [(1, 7, None), (17, 200, None),
                                                    (32, 256, "packed")])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_layer_loop_matches_torch_on_many_programs(cell, batch, hidden, lengths, dtype,
                                                        monkeypatch):
    """kernels/fused_steps.py where the interpreter cannot go: H/16 programs a step, each
    finishing its units' share of the recurrent GEMM (backward: the step undone before's
    gate gradients, written by the launch before, through W_hh). A bidirectional stepwise
    TritonLSTM / TritonGRU (packed: the forward direction's rows shrink step by step)
    against torch's in float64, outputs, final states and every gradient."""
    from lstm_triton import TritonGRU, TritonLSTM
    from lstm_triton.kernels import fused_steps

    torch.manual_seed(0)
    ref_cls, cls = ((torch.nn.LSTM, TritonLSTM) if cell == "lstm" else (torch.nn.GRU, TritonGRU))
    ref = ref_cls(24, hidden, bidirectional=True).cuda().double()
    ours = cls(24, hidden, bidirectional=True, backend="stepwise").cuda().to(dtype)
    ours.load_state_dict(ref.state_dict())
    T = 9
    x = torch.randn(T, batch, 24, device="cuda", dtype=torch.float64)
    sizes = (sorted(torch.randint(1, T + 1, (batch,)).tolist(), reverse=True)
             if lengths else [T] * batch)

    def run(module, dt):
        inp = x.to(dt).requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(inp, sizes)
        out, finals = module(packed)
        finals = finals if isinstance(finals, tuple) else (finals,)
        loss = out.data.double().sin().sum() + sum((f.double() * (k + 2)).cos().sum()
                                                   for k, f in enumerate(finals))
        loss.backward()
        return [out.data, *finals, inp.grad] + [p.grad for p in module.parameters()]

    launched = counted(monkeypatch, fused_steps, f"{cell}_forward_steps")
    got = run(ours, dtype)
    assert len(launched) == (2 if not lengths or min(sizes) == T else 1)
    for g, w in zip(got, run(ref, torch.float64)):
        assert_close(g, w.to(g.dtype), dtype, f"fused {cell} layer loop")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", ["stepwise", "persistent"])
def test_a_layer_on_the_second_gpu_runs_there(backend):
    """kernels/launch.py's device guard: the current device is cuda:0, the layer and its
    input live on cuda:1; forward and backward match torch there."""
    from lstm_triton import TritonLSTM

    torch.manual_seed(0)
    ref = torch.nn.LSTM(16, 32).to("cuda:1")
    ours = TritonLSTM(16, 32, backend=backend).to("cuda:1")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(8, 4, 16, device="cuda:1")
    with torch.cuda.device(0):
        got, want = ours(x)[0], ref(x)[0]
        got.sum().backward()
        want.sum().backward()
    assert got.device == torch.device("cuda:1")
    assert_close(got, want, torch.float32, "second GPU")
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, torch.float32, "second GPU grad")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_deferred_flag_checks_wait_for_no_kernel_and_give_the_same_bits(cell, monkeypatch):
    """persistent_config.DEFERRED_BARRIER_CHECK (issue 17): a 2-layer training step reads no
    barrier flag back while it runs (torch's sync debug mode raises at any host sync) and
    gives the bits of the step that reads each flag at once; every deferred flag reaches
    the host and none failed (cooperative launches meet)."""
    from lstm_triton.kernels import grid_sync, persistent_config
    module, _ = twin_modules(cell, 64, 512, num_layers=2, backend="persistent")
    x = torch.randn(64, 8, 64, requires_grad=True)
    weights = [torch.randn(64, 8, 512)] + [torch.randn(2, 8, 512)] * 2
    at_once = outputs_and_grads(module, x, None, weights, [x])
    monkeypatch.setattr(persistent_config, "DEFERRED_BARRIER_CHECK", True)
    outputs_and_grads(module, x, None, weights, [x])  # first call: compiles, plans
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, finals, grads = outputs_and_grads(module, x, None, weights, [x])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for a, b in zip([at_once[0], *at_once[1], *at_once[2]], [out, *finals, *grads]):
        assert torch.equal(a, b)
    torch.cuda.synchronize()
    assert grid_sync.deferred_failures() == 0 and not grid_sync._PENDING
