"""How much generated work the tests do: ``PARLEY_FUZZ_SCALE`` (1 unless set).

``make test`` runs every count as written (scale 1); ``make check`` sets 0.2
for its quick pass; a long fuzzing run sets, say, 20. The Hypothesis example
counts and the length of the long in-memory conversation go through
:func:`scaled`.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("PARLEY_FUZZ_SCALE", "1"))


def scaled(count: int, *, least: int = 1) -> int:
    """``count`` times the scale, rounded, and never below ``least``."""
    return max(least, round(count * SCALE))
