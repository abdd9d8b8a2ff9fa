"""lstm_triton: drop-in nn.LSTM / nn.GRU on Triton kernels."""
from .cells import TritonGRUCell, TritonLSTMCell
from .rnn import TritonGRU, TritonLSTM

__all__ = ["TritonLSTM", "TritonGRU", "TritonLSTMCell", "TritonGRUCell"]
