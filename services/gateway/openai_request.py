"""An OpenAI chat-completions body read into what Chorus runs, checked field by field.

Pure: no I/O. Inline files (data URLs) come back as bytes for the HTTP adapter to store.
Every parameter is honoured or refused with a message naming it, never silently ignored.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from services.common.artifact_refs import MEDIA_TYPE, safe_file_name
from services.gateway.errors import RequestError

_SYSTEM_ROLES = ("system", "developer")  # `developer` is the newer name of `system`
# Sampling and bookkeeping parameters of OpenAI's API that do not change what Chorus does:
# they are accepted (clients send them by default) and have no effect on a plan of models.
_ACCEPTED = {
    "model", "temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "user",
    "metadata", "store", "logit_bias", "service_tier", "parallel_tool_calls", "reasoning_effort",
}  # fmt: skip
_KNOWN = _ACCEPTED | {
    "messages", "stream", "stream_options", "stop", "max_tokens", "max_completion_tokens", "n",
    "tools", "tool_choice", "functions", "function_call", "response_format", "logprobs",
    "top_logprobs", "modalities", "audio", "prediction",
}  # fmt: skip
_REFUSED = {
    "tools": "Chorus plans its own tasks; it calls no client tools",
    "tool_choice": "Chorus plans its own tasks; it calls no client tools",
    "functions": "Chorus plans its own tasks; it calls no client functions",
    "function_call": "Chorus plans its own tasks; it calls no client functions",
    "response_format": "Chorus answers in text (markdown), not in a requested format",
    "logprobs": "Chorus's answer has no token log-probabilities",
    "top_logprobs": "Chorus's answer has no token log-probabilities",
    "modalities": "files Chorus makes come as links in the answer",
    "audio": "files Chorus makes come as links in the answer",
    "prediction": "predicted outputs are not supported",
}


@dataclass(frozen=True)
class InlineFile:
    data: bytes
    name: str
    media_type: str


@dataclass
class Message:
    role: str  # system, user or assistant
    texts: list[str] = field(default_factory=list)
    files: list[InlineFile] = field(default_factory=list)


@dataclass
class ChatCompletion:
    """What a chat-completions call asks for."""

    messages: list[Message]
    stream: bool = False
    include_usage: bool = False
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None


def read_body(body: object) -> ChatCompletion:
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    for name in body:
        if name not in _KNOWN:
            raise RequestError(f"{name}: not a chat-completions parameter")
        if name in _REFUSED and body[name] not in (None, False, [], "auto", "none"):
            raise RequestError(f"{name}: {_REFUSED[name]}")
    n = _optional(body, "n", int)
    if n is not None and n != 1:
        raise RequestError("n: Chorus gives one answer per request (each runs models); use n=1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: must be a non-empty list")
    options = _optional(body, "stream_options", dict) or {}
    return ChatCompletion(
        messages=[read_message(i, m) for i, m in enumerate(messages)],
        stream=bool(_optional(body, "stream", bool)),
        include_usage=bool(options.get("include_usage")),
        stop=_stop(body.get("stop")),
        max_tokens=_max_tokens(body),
    )


def read_message(i: int, m: object) -> Message:
    if not isinstance(m, dict):
        raise RequestError(f"messages[{i}]: must be an object")
    role = m.get("role")
    if role == "tool" or m.get("tool_calls"):
        raise RequestError(f"messages[{i}].role: Chorus calls no client tools, so none answer")
    if role not in ("system", "developer", "user", "assistant"):
        raise RequestError(f"messages[{i}].role: system, developer, user or assistant")
    message = Message(role="system" if role in _SYSTEM_ROLES else str(role))
    content = m.get("content")
    if content is None or isinstance(content, str):
        message.texts.append(content or "")
        return message
    if not isinstance(content, list):
        raise RequestError(f"messages[{i}].content: a string or a list of parts")
    for j, part in enumerate(content):
        _read_part(f"messages[{i}].content[{j}]", part, message)
    return message


def _read_part(where: str, part: object, message: Message) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(part, dict) or kind not in ("text", "image_url", "file"):
        raise RequestError(f"{where}.type: text, image_url or file")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(f"{where}.text: must be a string")
        message.texts.append(text)
    elif kind == "image_url":
        image = part.get("image_url")
        # OpenAI's shape is {"url": ...}; some clients send the URL as a bare string.
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise RequestError(f"{where}.image_url.url: must be a URL")
        if url.startswith("data:"):
            message.files.append(data_url(url, "image", f"{where}.image_url.url"))
        else:
            message.texts.append(url)  # a URL the planner passes on as written
    else:
        file = part.get("file")
        if not isinstance(file, dict) or not isinstance(file.get("file_data"), str):
            raise RequestError(f"{where}.file.file_data: a data URL")
        name = file.get("filename") or "file"
        if not isinstance(name, str):
            raise RequestError(f"{where}.file.filename: must be a string")
        message.files.append(data_url(file["file_data"], name, f"{where}.file.file_data"))


def data_url(url: str, name: str, where: str) -> InlineFile:
    """`data:image/png;base64,...` as a file; `name` gains an extension when it has none."""
    head, _, payload = url.partition(",")
    media_type = head.removeprefix("data:").split(";")[0] or "application/octet-stream"
    if not MEDIA_TYPE.fullmatch(media_type):  # it is echoed in a header when fetched
        raise RequestError(f"{where}: {media_type[:40]!r} is not a media type")
    if ";base64" not in head:
        raise RequestError(f"{where}: only base64 data URLs can be uploaded inline")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise RequestError(f"{where}: bad base64: {e}") from e
    name = safe_file_name(name[:100])
    if "." not in name:
        name = f"{name}.{media_type.split('/')[-1].split('+')[0]}"
    return InlineFile(data, name, media_type)


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    # bool is an int in Python; a JSON true is no count.
    if value is not None and (
        not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    ):
        raise RequestError(f"{name}: must be {'an integer' if kind is int else kind.__name__}")
    return value


def _stop(value: object) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if value is None:
        return ()
    if (
        not isinstance(stops, list)
        or len(stops) > 4
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise RequestError("stop: a string or a list of up to 4 non-empty strings")
    return tuple(stops)


def _max_tokens(body: dict[str, Any]) -> int | None:
    limit: int | None = _optional(body, "max_completion_tokens", int)
    if limit is None:
        limit = _optional(body, "max_tokens", int)
    if limit is not None and limit < 1:
        raise RequestError("max_tokens: must be at least 1")
    return limit
