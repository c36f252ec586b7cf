"""Test setup shared by every test file.

Triton kernels run under the interpreter on CPU: TRITON_INTERPRET must be set before triton.jit decorates them,
so it is set here, before any test imports smtpo_fast. On a machine with a GPU the real compiler is used.
"""

import os
import warnings

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The interpreter evaluates both sides of tl.where with numpy, which warns on 0 * -inf in the discarded side.
warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
