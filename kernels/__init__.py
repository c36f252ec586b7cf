"""Triton kernels of smtpo-fast (installed as ``smtpo_fast.kernels``). Host-side wrappers live in smtpo_fast.ops."""

from . import advantages, decode_attention, linear_logprob, logprob, sampling  # noqa: F401
