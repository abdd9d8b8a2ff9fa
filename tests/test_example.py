"""examples/char_lm.py: the nn.LSTM and TritonLSTM loss curves agree (a handful of steps)."""
import importlib.util
import math
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "char_lm.py"


def load_example():
    spec = importlib.util.spec_from_file_location("char_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_char_lm_curves_agree(capsys):
    char_lm = load_example()
    steps = 4
    reference, triton = char_lm.main([
        "--steps", str(steps), "--batch", "2", "--seq-len", "5", "--embed", "4",
        "--hidden", "6", "--layers", "2", "--backend", "stepwise",
        # cuDNN draws nn.LSTM's dropout masks from its own generator: exact agreement
        # with dropout holds on the CPU only.
        "--dropout", "0.0" if torch.cuda.is_available() else "0.2"])
    assert len(reference) == len(triton) == steps
    assert all(math.isfinite(x) for x in reference + triton)
    n_symbols = len(char_lm.corpus()[1])
    assert reference[0] > 0.5 * math.log(n_symbols)  # starts near a uniform guess
    for step, (a, b) in enumerate(zip(reference, triton)):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), f"step {step}: {a} vs {b}"
    printed = capsys.readouterr().out
    assert "nn.LSTM" in printed and "TritonLSTM" in printed and "max |loss difference|" in printed
