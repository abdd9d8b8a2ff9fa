"""What backend="auto" runs on CUDA: the fastest backend measured per case.

Written by `python -m bench.calibrate <raw CSV>`; regenerate rather than edit.
Each row: (cell, compute capability, dtype, pass, batch, hidden, seq_len, backend,
speedup of that backend over cuDNN, measured). dispatch.auto_cuda_backend looks up
the nearest row; with no row near enough it runs cuDNN ("torch").

No GPU sweep has been run for this project yet: the table is empty, so "auto" on
CUDA runs cuDNN everywhere.
"""
SOURCE = None  # the raw CSV the rows come from

MEASURED = ()
