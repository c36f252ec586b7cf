"""Test setup shared by every test file.

Triton kernels run under the interpreter on CPU: TRITON_INTERPRET must be set before triton.jit decorates them,
so it is set here, before any test imports smtpo_fast. On a machine with a GPU the real compiler is used.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
