"""Triton kernels and their launchers (installed as lstm_triton.kernels)."""
