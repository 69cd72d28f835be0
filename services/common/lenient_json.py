"""Reading the JSON that LLMs really write: prose and code fences around it, Python-style
quoting (with apostrophes inside strings), trailing commas, missing or stray brackets.

Every repair is named, so a caller can tell a reply read exactly from one that needed help.
Size and nesting depth are checked before any parser runs, so a hostile reply costs bounded
time and memory.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_REPLY_CHARS = 200_000
MAX_DEPTH = 24

_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_CLOSER = {"[": "]", "{": "}"}
_PY_WORDS = {"True": "true", "False": "false", "None": "null"}


class JSONRepairError(ValueError):
    """The text holds no JSON that could be read, even leniently."""


@dataclass(frozen=True)
class Loaded:
    value: Any
    repairs: tuple[str, ...]  # empty: the JSON was read exactly as written


def load_lenient(reply: str) -> Loaded:
    if len(reply) > MAX_REPLY_CHARS:
        raise JSONRepairError(f"the reply is {len(reply)} characters, over {MAX_REPLY_CHARS}")
    text, repairs = _json_part(reply)
    depth = _max_depth(text)
    if depth > MAX_DEPTH:
        raise JSONRepairError(f"the JSON nests {depth} levels deep, over {MAX_DEPTH}")
    original = text
    for fix, label in _REPAIRS:
        candidate = fix(text)
        if candidate != text:
            repairs = (*repairs, label)
            text = candidate
        value = _parse(text)
        if value is not None:
            return Loaded(value[0], (*repairs, *value[1]))
    try:  # the last resort: a Python literal that the re-quoting did not cover
        return Loaded(ast.literal_eval(original), ("read a Python literal",))
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError) as e:
        raise JSONRepairError("the reply is not JSON, even after repairs") from e


def _json_part(reply: str) -> tuple[str, tuple[str, ...]]:
    """The JSON inside a reply: in a code fence if there is one, else from the first bracket."""
    fenced = _FENCE.search(reply)
    text = (fenced.group(1) if fenced else reply).strip()
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        raise JSONRepairError("the reply holds no JSON")
    end = max(text.rfind("]"), text.rfind("}")) + 1
    inner = text[start:end] if end > start else text[start:]
    if fenced:
        return inner, ("took the JSON out of a code fence",)
    if inner != text:
        return inner, ("took the JSON out of the text around it",)
    return inner, ()


def _parse(text: str) -> tuple[Any, tuple[str, ...]] | None:
    # ValueError covers JSONDecodeError and numbers too long to convert (over 4,300 digits).
    try:
        return json.loads(text), ()
    except (ValueError, RecursionError):
        pass
    try:
        return json.loads(_python_to_json(text)), ("read Python-style quoting",)
    except (ValueError, RecursionError):
        return None


def _remove_trailing_commas(text: str) -> str:
    return _TRAILING_COMMA.sub(r"\1", text)


def _balance(text: str) -> str:
    """Drops closing brackets that match nothing and closes what was left open.

    A list of objects whose opening `[` is missing (`{..}, {..}]`) gets it back.
    """
    if text.startswith("{") and text.endswith("]"):
        text = "[" + text
    out: list[str] = []
    stack: list[str] = []
    for kind, char in _scan(text):
        if kind == "close":
            if not stack or _CLOSER[stack[-1]] != char:
                continue
            stack.pop()
        elif kind == "open":
            stack.append(char)
        out.append(char)
    out.extend(_CLOSER[c] for c in reversed(stack))
    repaired = "".join(out)
    if re.fullmatch(r"\{.*\}\s*,\s*\{.*\}", repaired, re.S):
        repaired = f"[{repaired}]"
    return repaired


_REPAIRS: list[tuple[Callable[[str], str], str]] = [
    (lambda text: text, "read as written"),
    (_remove_trailing_commas, "removed trailing commas"),
    (_balance, "fixed missing or stray brackets"),
]


def _python_to_json(text: str) -> str:
    """'single-quoted' strings become "double-quoted" ones; True/False/None become JSON's."""
    out: list[str] = []
    quote = ""
    escaped = False
    word = ""
    for i, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
                out.append("'" if char == "'" else "\\" + char)
                continue
            if char == "\\":
                escaped = True
                continue
            if char == quote and not _is_apostrophe(text, i, quote):
                quote = ""
                out.append('"')
            elif char == '"' and quote == "'":
                out.append('\\"')
            else:
                out.append(char)
            continue
        if char.isalpha():
            word += char
            continue
        if word:
            out.append(_PY_WORDS.get(word, word))
            word = ""
        if char in "\"'":
            quote = char
            out.append('"')
        else:
            out.append(char)
    if word:
        out.append(_PY_WORDS.get(word, word))
    return "".join(out)


def _max_depth(text: str) -> int:
    depth = deepest = 0
    for kind, _ in _scan(text):
        if kind == "open":
            depth += 1
            deepest = max(deepest, depth)
        elif kind == "close":
            depth = max(0, depth - 1)
    return deepest


def _scan(text: str) -> list[tuple[str, str]]:
    """Characters tagged open/close/other, ignoring brackets inside quoted strings."""
    tagged: list[tuple[str, str]] = []
    quote = ""
    escaped = False
    for i, char in enumerate(text):
        kind = "other"
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote and not _is_apostrophe(text, i, quote):
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            kind = "open"
        elif char in "]}":
            kind = "close"
        tagged.append((kind, char))
    return tagged


def _is_apostrophe(text: str, i: int, quote: str) -> bool:
    """In a 'single-quoted' string, a `'` ends it only where JSON syntax follows: the `'` of
    "don't" or of 'a 'green' city' does not."""
    if quote != "'":
        return False
    rest = text[i + 1 : i + 64].lstrip()
    return bool(rest) and rest[0] not in ",:}]"
