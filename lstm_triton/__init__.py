"""lstm_triton: drop-in nn.LSTM / nn.GRU on Triton kernels."""
from .cells import TritonGRUCell, TritonLSTMCell
from .dispatch import FallbackWarning
from .export import export_mode
from .patch import patch, unpatch
from .rnn import TritonGRU, TritonLSTM

__all__ = ["FallbackWarning", "TritonGRU", "TritonGRUCell", "TritonLSTM", "TritonLSTMCell",
           "export_mode", "patch", "unpatch"]
