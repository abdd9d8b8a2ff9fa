"""What changes while a CUDA graph is being captured.

Small-batch inference, the latency-bound regime the persistent kernel is for, is where
people capture CUDA graphs (torch.cuda.graph, torch.cuda.make_graphed_callables,
torch.compile(mode="reduce-overhead")), and cuDNN's nn.LSTM can be captured. A capture
records device work only: the host may not wait on the device (no .item()), and torch
refuses copies from pageable host memory. Outside a capture the launchers do both: they
copy a packed schedule to the device, and read the grid barrier's failure flag back to
rerun a failed launch on stepwise. Under capture:

  host -> device   a packed schedule is copied from pinned host memory that is kept for
                   the life of the process, because the graph re-reads that memory at
                   every replay (a padded batch's schedule is made on the device and
                   needs no copy: persistent_config.schedule_tensors);
  barrier flag     not read. The launch's outputs are filled with NaN on the device when
                   the flag is set, so a replay whose grid could not meet is loud, never
                   silently wrong: inside a graph the host cannot fall back. The
                   cooperative launch (persistent_config.COOPERATIVE) has the driver start
                   the grid only when all of it is resident, so this is the guard behind it.
"""
import torch

# Pinned host tensors that a captured graph copies from at each replay (never freed: a
# graph may outlive the call that captured it). Only filled during captures.
_CAPTURED_HOST_TENSORS = []


def capturing(device) -> bool:
    """True while the current CUDA stream of `device` is capturing a graph."""
    return torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing()


def host_to_device(host: torch.Tensor, device) -> torch.Tensor:
    """`host` (a CPU tensor) on `device`, also inside a graph capture."""
    if not capturing(device):
        return host.to(device)
    if torch.device(device).type == "cuda":
        host = host.pin_memory()
    _CAPTURED_HOST_TENSORS.append(host)
    return host.to(device, non_blocking=True)

