"""smtpo-fast: SMTPO for LLM-based conversational recommendation, and the fast RL ops under it.

``smtpo_fast.ops`` holds the ops (fused token log-probs and entropy, ...); ``smtpo_fast.integrations`` has
drop-in equivalents of TRL's and verl's helpers. Importing the package never fails for want of the native
extension or Triton: ops fall back to their torch reference with one warning (see ``smtpo_fast.ops.backends()``).
"""

__version__ = "0.1.0"

from . import ops  # noqa: E402,F401
from . import integrations  # noqa: E402,F401
