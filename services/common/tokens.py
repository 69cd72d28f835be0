"""Counting tokens without a tokenizer download.

The exact count depends on the model's tokenizer, which the planner does not ship (no
`tiktoken` data, no `transformers`). This estimate follows how BPE vocabularies of GPT-style
models split English: a common word is one token, a long word one per ~4 characters, and
each punctuation mark, digit group or symbol its own. It is used for budgets (cut the
history to fit) and for comparing prompts, where the same estimate is applied to both sides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PIECES = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]")


def count_tokens(text: str) -> int:
    """The estimate of `text`'s tokens. No piece spans a space or a punctuation mark, so texts
    joined at one count as the sum of their counts: a prompt can be counted in parts, once."""
    total = 0
    for piece in _PIECES.findall(text):
        total += 1 + (len(piece) - 1) // 6 if piece.isalpha() else 1
    return total


TURN_OVERHEAD = 4  # tokens a chat turn costs beyond its text: its role and separators


def newest_within(texts: Sequence[str], budget: int) -> tuple[int, int]:
    """How many of the newest `texts` (chat turns, oldest first) fit in `budget` tokens, and
    the tokens those kept use (their turns' overhead included)."""
    used = 0
    for kept, text in enumerate(reversed(texts)):
        cost = count_tokens(text) + TURN_OVERHEAD
        if used + cost > budget:
            return kept, used
        used += cost
    return len(texts), used
