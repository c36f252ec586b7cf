"""Triton kernels of smtpo-fast (installed as ``smtpo_fast.kernels``). Host-side wrappers live in smtpo_fast.ops."""

from . import logprob  # noqa: F401
from . import advantages  # noqa: F401
from . import linear_logprob  # noqa: F401
