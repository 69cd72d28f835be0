"""Reading the JSON that LLMs really write: a reasoning model's `<think>` block before it, prose
and code fences around it, Python-style quoting (with apostrophes inside strings), JSON5
(comments, bare keys), typographic quotes, trailing commas, missing or stray brackets, and a
reply cut off by the token limit.

Every repair is named, so a caller can tell a reply read exactly from one that needed help.
Size and nesting depth are checked before any parser runs, so a hostile reply costs bounded
time and memory. `json_repair` is the last resort, behind the named repairs.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import json_repair

MAX_REPLY_CHARS = 200_000  # the answer, once reasoning is taken out
MAX_REASONING_CHARS = 2_000_000  # a `<think>` block is dropped unread, so it may be longer
MAX_DEPTH = 24

_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.S)
_THINK_OPEN = re.compile(r"<think(?:ing)?>", re.I)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.I)
_DECODER = json.JSONDecoder()
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_CLOSER = {"[": "]", "{": "}"}
_PY_WORDS = {"True": "true", "False": "false", "None": "null"}
_CURLY_DOUBLE = "\u201c\u201d\u201e"  # typographic double quotes, opening and closing
_CURLY_SINGLE = "\u2018\u2019"  # typographic single quotes
_QUOTES = "\"'" + _CURLY_DOUBLE + _CURLY_SINGLE
_CLOSERS_OF = {'"': '"', "'": "'"} | dict.fromkeys(_CURLY_DOUBLE, _CURLY_DOUBLE)
_CLOSERS_OF |= dict.fromkeys(_CURLY_SINGLE, "'" + _CURLY_SINGLE)

REASONING_REMOVED = "removed the reasoning before the answer (a </think> block)"
PYTHON_QUOTING = "read Python-style quoting"
COMMENTS_REMOVED = "removed comments"
BARE_KEYS = "quoted bare keys"
TYPOGRAPHIC_QUOTES = "read typographic quotes as JSON quotes"
AROUND = "took the JSON out of the text around it"
LAST_RESORT = "read with json_repair (the last resort)"


class JSONRepairError(ValueError):
    """The text holds no JSON that could be read, even leniently."""


class ReasoningOnly(JSONRepairError):
    """The reply is a reasoning block and nothing after it."""


class CutBeforeAnyItem(JSONRepairError):
    """The reply was cut off before the first item of its list was complete."""


@dataclass(frozen=True)
class Loaded:
    value: Any
    repairs: tuple[str, ...]  # empty: the JSON was read exactly as written


def load_lenient(reply: str, *, cut_off: bool = False) -> Loaded:
    """The JSON in an LLM's reply, and the repairs it took.

    `cut_off`: the server stopped the reply at its token limit. Then only the items of the
    outermost list that closed before the cut are kept: an unfinished item is never completed
    by guesswork. A reply whose JSON stops mid-item (its first bracket never closes, and it
    ends inside a string or after a value rather than on a closing bracket) is read as cut off
    too, whatever the server said.
    """
    if len(reply) > MAX_REPLY_CHARS + MAX_REASONING_CHARS:
        raise JSONRepairError(
            f"the reply is {len(reply)} characters, over {MAX_REPLY_CHARS + MAX_REASONING_CHARS}"
        )
    answer, repairs = _without_reasoning(reply)
    if len(answer) > MAX_REPLY_CHARS:
        raise JSONRepairError(f"the answer is {len(answer)} characters, over {MAX_REPLY_CHARS}")
    text, found = _from_first_bracket(answer)
    repairs += found
    shape = _Shape.of(text)
    if shape.deepest > MAX_DEPTH:
        raise JSONRepairError(f"the JSON nests {shape.deepest} levels deep, over {MAX_DEPTH}")
    if not cut_off and shape.stops_inside:
        cut_off = True
        repairs += ("read the reply as cut off: it stops inside its JSON",)
    if cut_off and not shape.closes:
        text, kept = _complete_items(text)
        if not kept:
            raise CutBeforeAnyItem(
                "the reply was cut off before the first item of its list was complete"
            )
        repairs += (f"kept the list items completed before the reply was cut off ({kept})",)
    value, read = _read(text)
    return Loaded(value, tuple(dict.fromkeys((*repairs, *read))))


def answer_text(reply: str) -> str:
    """A reply without a reasoning model's thinking: "" when it is only thinking."""
    try:
        return _without_reasoning(reply)[0]
    except ReasoningOnly:
        return ""


def _without_reasoning(reply: str) -> tuple[str, tuple[str, ...]]:
    """The answer after a reasoning model's thinking: what follows the last `</think>` (the
    opening tag may be missing: some chat templates put it in the prompt)."""
    closes = list(_THINK_CLOSE.finditer(reply))
    if closes:
        answer = reply[closes[-1].end() :]
        if not answer.strip():
            raise ReasoningOnly("the reply is only reasoning: nothing follows its </think>")
        return answer, (REASONING_REMOVED,)
    opened = _THINK_OPEN.search(reply)
    if opened is None:
        return reply, ()
    if not reply[: opened.start()].strip():
        raise ReasoningOnly("the reply is only reasoning: its <think> block never closes")
    return reply[: opened.start()], ("removed an unfinished <think> block after the answer",)


def _from_first_bracket(answer: str) -> tuple[str, tuple[str, ...]]:
    """The reply from its first bracket on: inside a code fence if there is one."""
    fenced = _FENCE.search(answer)
    text = (fenced.group(1) if fenced else answer).strip()
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        raise JSONRepairError("the reply holds no JSON")
    if fenced:
        return text[start:], ("took the JSON out of a code fence",)
    return text[start:], (AROUND,) if start else ()


def _read(text: str) -> tuple[Any, tuple[str, ...]]:
    """The value of a text that starts at its JSON, by the first reading that works."""
    try:
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        pass
    else:
        rest = text[end:].lstrip()
        if not rest:
            return value, ()
        if rest[0] not in ",[]{}\"'":  # prose after the JSON, brackets in it or not
            return value, (AROUND,)
    spans = dict.fromkeys((_to_last_bracket(text), _first_structure(text)))
    for span in spans:
        read = _read_repaired(span)
        if read is not None:
            return read[0], ((AROUND,) if span != text else ()) + read[1]
    span = next(iter(spans))
    try:  # a Python literal that the re-quoting did not cover
        return ast.literal_eval(span), ("read a Python literal",)
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
        pass
    value = json_repair.loads(span)
    if isinstance(value, list | dict) and value:
        return value, (LAST_RESORT,)
    raise JSONRepairError("the reply is not JSON, even after repairs")


def _read_repaired(span: str) -> tuple[Any, tuple[str, ...]] | None:
    text, repairs = _to_json(span)
    for fix, label in _REPAIRS:
        candidate = fix(text)
        if candidate != text:
            repairs = (*repairs, label)
            text = candidate
        try:  # ValueError: JSONDecodeError, or a number too long to convert (4,300 digits)
            return json.loads(text), repairs
        except (ValueError, RecursionError):
            continue
    return None


def _to_last_bracket(text: str) -> str:
    end = max(text.rfind("]"), text.rfind("}")) + 1
    return text[:end] if end > 0 else text


def _first_structure(text: str) -> str:
    """The text up to where its first bracket closes (prose after it may hold brackets too)."""
    depth = 0
    for i, (kind, _) in enumerate(_scan(text)):
        if kind in ("open", "close"):
            depth += 1 if kind == "open" else -1
            if depth == 0:
                return text[: i + 1]
    return text


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


def _complete_items(text: str) -> tuple[str, int]:
    """The outermost list cut back to the items that closed before the text ends, closed
    again, and how many items that is."""
    stack: list[str] = []
    outer: int | None = None  # where the outermost list sits in the stack
    kept_end, kept_stack, kept = 0, [], 0
    for i, (kind, char) in enumerate(_scan(text)):
        if kind == "open":
            if char == "[" and outer is None:
                outer = len(stack)
            stack.append(char)
        elif kind == "close" and stack:
            stack.pop()
            if outer is not None and len(stack) == outer + 1:
                kept_end, kept_stack, kept = i + 1, list(stack), kept + 1
    closing = "".join(_CLOSER[c] for c in reversed(kept_stack))
    return text[:kept_end] + closing, kept


def _to_json(text: str) -> tuple[str, tuple[str, ...]]:
    """JSON from Python and JSON5 habits: quotes ('…', “…”) become "…", comments go, bare keys
    are quoted, True/False/None become JSON's. Returns what it changed, by name."""
    out: list[str] = []
    done: set[str] = set()
    quote = ""
    word = ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            i, quote = _in_string(text, i, quote, out)
            continue
        if char.isalnum() or char == "_":
            word += char
            i += 1
            continue
        if word:
            out.append(_word(word, text, i, done))
            word = ""
        if text.startswith(("//", "/*"), i):
            i = _after_comment(text, i)
            done.add(COMMENTS_REMOVED)
            continue
        if char in _QUOTES:
            quote = char
            out.append('"')
            if char == "'":
                done.add(PYTHON_QUOTING)
            elif char != '"':
                done.add(TYPOGRAPHIC_QUOTES)
        else:
            out.append(char)
        i += 1
    if word:
        out.append(_word(word, text, len(text), done))
    return "".join(out), tuple(sorted(done))


def _in_string(text: str, i: int, quote: str, out: list[str]) -> tuple[int, str]:
    """One step inside a string opened by `quote`: the next index and the quote still open."""
    char = text[i]
    if char == "\\" and i + 1 < len(text):
        following = text[i + 1]
        # \' is not a JSON escape; any other escape is kept as written.
        out.append("'" if following == "'" else char + following)
        return i + 2, quote
    if _closes_string(text, i, quote):
        out.append('"')
        return i + 1, ""
    out.append('\\"' if char == '"' else char)
    return i + 1, quote


def _closes_string(text: str, i: int, quote: str) -> bool:
    char = text[i]
    if quote == '"':
        return char == '"'
    if quote in _CURLY_DOUBLE:
        return char in _CURLY_DOUBLE
    if char != "'" and not (quote in _CURLY_SINGLE and char in _CURLY_SINGLE):
        return False
    return not _is_apostrophe(text, i, "'")


def _word(word: str, text: str, end: int, done: set[str]) -> str:
    if word in _PY_WORDS:
        done.add(PYTHON_QUOTING)
        return _PY_WORDS[word]
    if not word[0].isdigit() and text[end : end + 32].lstrip().startswith(":"):
        done.add(BARE_KEYS)
        return f'"{word}"'
    return word


def _after_comment(text: str, i: int) -> int:
    if text.startswith("//", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    end = text.find("*/", i + 2)
    return len(text) if end < 0 else end + 2


@dataclass(frozen=True)
class _Shape:
    """The brackets of a text, outside strings, in one pass."""

    deepest: int
    closes: bool  # the bracket the text starts with is closed somewhere
    stops_inside: bool  # it never closes, and the text ends inside a string or after a value

    @classmethod
    def of(cls, text: str) -> _Shape:
        depth = deepest = 0
        closes = False
        tagged = _scan(text)
        for kind, _ in tagged:
            if kind == "open":
                depth += 1
                deepest = max(deepest, depth)
            elif kind == "close":
                depth = max(0, depth - 1)
                closes = closes or depth == 0
        # A text that ends on a closing bracket only lacks some: a missing `]` is a habit; one
        # that ends on anything else (`"dep": `, `"<GENER`) was cut off mid-item.
        last = len(text.rstrip()) - 1
        ends_on_closer = last >= 0 and tagged[last][0] == "close"
        return cls(deepest, closes, not closes and not ends_on_closer)


def _scan(text: str) -> list[tuple[str, str]]:
    """Characters tagged open/close/other, or string: an opening quote and what follows it up
    to its closing quote (tagged other), so that brackets inside strings are not counted."""
    tagged: list[tuple[str, str]] = []
    quote = ""
    closers = ""  # the characters that may close the open string
    escaped = False
    for i, char in enumerate(text):
        kind = "other"
        if quote:
            kind = "string"
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char in closers and _closes_string(text, i, quote):
                quote = ""
                kind = "other"
        elif char in _QUOTES:
            quote = char
            closers = _CLOSERS_OF[char]
            kind = "string"
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
