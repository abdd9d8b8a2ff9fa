"""Persistent backend: not built yet (issue 6)."""


def _missing(*_args, **_kwargs):
    raise NotImplementedError(
        "backend='persistent' is not implemented yet; use backend='stepwise' or 'auto'.")


lstm_forward = lstm_backward = gru_forward = gru_backward = _missing
