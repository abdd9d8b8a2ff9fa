"""A small AWD-LSTM-style character language model: weight drop, variational dropout.

    python examples/awd_lm.py                       # tiny sizes: CPU interpreter, minutes
    python examples/awd_lm.py --steps 500 --hidden 256 --seq-len 128   # on a GPU

AWD-LSTM (Merity et al. 2017) regularises with DropConnect on the recurrent weights
(`weight_drop`, which breaks cuDNN's flat weights in PyTorch's own recipes) and with
variational ("locked") dropout, one mask per sequence for every step. Here both are
options of TritonLSTM (plus `recurrent_dropout`, a variational mask on h_{t-1}), fused
into the same kernels. The text is the source of Python's `textwrap` module (no download).
The script trains with a progress bar and reports the validation loss in eval mode, where
every one of these options is off, against a uniform guess.
"""
import argparse
import inspect
import math
import os
import textwrap

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before lstm_triton defines its kernels

from torch import nn
from tqdm import tqdm

from lstm_triton import TritonLSTM


class AWDCharLM(nn.Module):
    def __init__(self, vocab, embed, hidden, layers, args):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = TritonLSTM(embed, hidden, num_layers=layers, batch_first=True,
                               dropout=args.dropout, variational_dropout=True,
                               weight_drop=args.weight_drop,
                               recurrent_dropout=args.recurrent_dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        y, _ = self.lstm(self.embed(tokens))
        return self.head(y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--embed", type=int, default=16)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2, help="between layers, variational")
    p.add_argument("--weight-drop", type=float, default=0.3)
    p.add_argument("--recurrent-dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    text = inspect.getsource(textwrap)
    vocab = sorted(set(text))
    data = torch.tensor([vocab.index(ch) for ch in text])
    split = int(0.9 * len(data))
    torch.manual_seed(0)
    model = AWDCharLM(len(vocab), args.embed, args.hidden, args.layers, args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def batch(source):
        starts = torch.randint(0, len(source) - args.seq_len - 1, (args.batch,))
        window = torch.stack([source[s:s + args.seq_len + 1] for s in starts.tolist()])
        return window.to(device)

    def loss_of(window):
        logits = model(window[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, len(vocab)),
                                           window[:, 1:].reshape(-1))

    losses = []
    for _ in (bar := tqdm(range(args.steps), disable=args.quiet)):
        loss = loss_of(batch(data[:split]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        valid = sum(loss_of(batch(data[split:])).item() for _ in range(4)) / 4
    print(f"train loss {losses[0]:.3f} -> {losses[-1]:.3f}; validation loss {valid:.3f} "
          f"(uniform guess {math.log(len(vocab)):.3f})")
    return losses, valid


if __name__ == "__main__":
    main()
