"""SQuAD-style answer normalisation shared by every token-level metric.

Identical to `normalize_answer` in the official SQuAD v1.1 evaluation script (and UnifiedQA's
copies of it): lowercase, delete every `string.punctuation` character, replace the words a, an,
the by a space, collapse whitespace. The order matters: punctuation goes before articles, so
"the-end" becomes "theend" (no article left) while "the end" becomes "end".
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace (SQuAD v1.1 eval)."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Whitespace tokens of the normalised answer."""
    return normalize_answer(text).split()
