"""A character-level language model trained twice: with nn.LSTM and with TritonLSTM.

    python examples/char_lm.py                 # a few minutes on a CPU, seconds on a GPU
    python examples/char_lm.py --steps 300 --hidden 128 --seq-len 64

The text is the source of a module of Python's standard library (no download).
Both runs start from the same seed, so the same weights, batches and dropout
masks; the Triton run is the torch model after `lstm_triton.patch(model)`.
(On CUDA, nn.LSTM draws its between-layer dropout masks inside cuDNN, from its own
generator: with --dropout > 0 there the two curves agree in distribution only.)
The script prints both loss curves and their largest difference: they agree to
float32 rounding, which grows slowly as the two runs' rounding compounds.

On a machine without CUDA the Triton kernels run in Triton's CPU interpreter
(slow, hence the tiny default sizes); with CUDA everything runs on the GPU.
"""
import argparse
import inspect
import os
import sys
import textwrap

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before lstm_triton defines its kernels

from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lstm_triton


def corpus():
    """Characters of a standard-library module's source, and the vocabulary."""
    text = inspect.getsource(textwrap)
    vocab = sorted(set(text))
    return torch.tensor([vocab.index(ch) for ch in text], device="cpu"), vocab


class CharLM(nn.Module):
    def __init__(self, vocab_size, embed, hidden, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens):
        y, _ = self.lstm(self.embed(tokens))
        return self.head(y)


def train(use_triton, args, data, vocab_size, device):
    """Loss after every step of one training run (same seed: same init, batches, dropout)."""
    torch.manual_seed(args.seed)
    model = CharLM(vocab_size, args.embed, args.hidden, args.layers, args.dropout).to(device)
    if use_triton:
        model = lstm_triton.patch(model, backend=args.backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed)
    losses = []
    name = "TritonLSTM" if use_triton else "nn.LSTM"
    for _ in tqdm(range(args.steps), desc=f"{name:>10}", disable=args.quiet):
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=batches,
                               device="cpu")
        window = torch.stack([data[s: s + args.seq_len + 1] for s in starts.tolist()]).to(device)
        logits = model(window[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab_size),
                                           window[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=24)
    p.add_argument("--embed", type=int, default=16)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="lstm_triton backend of the Triton run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars or curves")
    return p.parse_args(argv)


def main(argv=None):
    """Train both models; returns (torch losses, Triton losses)."""
    args = parse_args(argv)
    data, vocab = corpus()
    device = torch.device(args.device)
    if not args.quiet:
        print(f"text: textwrap.py, {len(data)} characters, {len(vocab)} symbols; device {device}")
    reference = train(False, args, data, len(vocab), device)
    triton = train(True, args, data, len(vocab), device)
    diff = max(abs(a - b) for a, b in zip(reference, triton))
    if not args.quiet:
        print(f"{'step':>5} {'nn.LSTM':>10} {'TritonLSTM':>10}")
        every = max(1, len(reference) // 15)
        for step in list(range(0, len(reference), every)) + [len(reference) - 1]:
            print(f"{step + 1:>5} {reference[step]:>10.5f} {triton[step]:>10.5f}")
        print(f"max |loss difference| over {len(reference)} steps: {diff:.2e}")
    return reference, triton


if __name__ == "__main__":
    main()
