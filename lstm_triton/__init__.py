"""lstm_triton: drop-in nn.LSTM / nn.GRU on Triton kernels."""
from .rnn import TritonGRU, TritonLSTM

__all__ = ["TritonLSTM", "TritonGRU"]
