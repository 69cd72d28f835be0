"""The LLM behind one small protocol, with the `openai` client as the real implementation."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import openai
from openai import AsyncOpenAI, AsyncStream
from prometheus_client import Counter, Histogram

from services.common import tracing
from services.common.settings import LLMSettings

log = logging.getLogger(__name__)
LLM_CALLS = Counter(
    "chorus_llm_calls_total", "LLM calls by operation and outcome.", ["op", "outcome"]
)
LLM_SECONDS = Histogram("chorus_llm_seconds", "Time an LLM call took.", ["op"])
LLM_TOKENS = Counter("chorus_llm_tokens_total", "Tokens the LLM reported using.", ["kind"])
# The client's typed `chat.completions.create` runs its parameter transform over every message
# of the prompt (type introspection per key: a quarter of the planner's CPU per request); our
# messages are plain role/content strings, which it would leave as they are. So the calls go
# through the client's own `post` (its documented way to send a body as it is), keeping its
# connection, retries, auth and errors. A reply is read as the JSON it came in, as a streamed
# chunk is: building the client's typed completion took about a tenth of each call's CPU, for
# the few fields read here.
_COMPLETIONS = "/chat/completions"


class LLMError(RuntimeError):
    """The LLM could not be reached or gave no usable reply."""


class LLMStreamCut(LLMError):
    """A streamed reply stopped partway: what came before it is all there is."""


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True)
class Completion:
    """A whole reply with what the server said about it, for a stage that must know whether
    the reply is finished (a plan cut off by the token limit must never run)."""

    text: str  # the answer; "" when the server sent only reasoning
    finish_reason: str | None  # "stop", "length", ...; None where the server does not say
    reasoning: str | None = None  # a reasoning model's thinking, where the server separates it
    completion_tokens: int | None = None  # as the server counted them

    @property
    def cut_off(self) -> bool:
        """The server stopped at the token limit: the reply is unfinished."""
        return self.finish_reason == "length"


class LLM(Protocol):
    name: str

    async def complete(self, messages: Sequence[ChatTurn], *, json_mode: bool = False) -> str:
        """The whole reply text."""
        ...

    def stream(self, messages: Sequence[ChatTurn]) -> AsyncIterator[str]:
        """The reply as it is generated, a piece at a time."""
        ...


class ReportingLLM(LLM, Protocol):
    """An LLM that also reports how each reply ended, as the planner needs."""

    async def completion(
        self,
        messages: Sequence[ChatTurn],
        *,
        json_mode: bool = False,
        max_tokens: int | None = None,
    ) -> Completion:
        """The whole reply, why it stopped and its reasoning; `max_tokens` None: the server's."""
        ...


class OpenAILLM:
    """Any OpenAI-compatible server (OpenAI, vLLM, TGI, Ollama, llama.cpp) by base URL."""

    def __init__(self, settings: LLMSettings) -> None:
        self.name = settings.model
        self._client = AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key or "not-needed",
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )
        self._json_mode = True  # until the server turns `response_format` down

    async def complete(self, messages: Sequence[ChatTurn], *, json_mode: bool = False) -> str:
        with _accounted("complete"):
            reply = await self._reply(messages, json_mode, None)
            content = _message(reply).get("content")
            if not isinstance(content, str):
                raise LLMError(f"LLM {self.name} returned no content")
            return content

    async def completion(
        self,
        messages: Sequence[ChatTurn],
        *,
        json_mode: bool = False,
        max_tokens: int | None = None,
    ) -> Completion:
        with _accounted("complete"):
            reply = await self._reply(messages, json_mode, max_tokens)
            choice = _choice(reply)
            if choice is None:
                raise LLMError(f"LLM {self.name} returned no choices")
            message = _message(reply)
            content, finish_reason = message.get("content"), choice.get("finish_reason")
            return Completion(
                text=content if isinstance(content, str) else "",
                finish_reason=finish_reason if isinstance(finish_reason, str) else None,
                reasoning=_reasoning(message),
                completion_tokens=_usage(reply).get("completion_tokens"),
            )

    async def _reply(
        self, messages: Sequence[ChatTurn], json_mode: bool, max_tokens: int | None
    ) -> dict[str, Any]:
        use_json = json_mode and self._json_mode
        try:
            reply = await self._create(messages, use_json, max_tokens)
        except openai.BadRequestError as e:
            if not use_json:
                raise LLMError(f"LLM {self.name} refused the request: {e}") from e
            # Many OpenAI-compatible servers lack JSON mode; the parsers cope without it.
            log.warning("LLM %s refused JSON mode; asking in plain text from now on", self.name)
            self._json_mode = False
            try:
                reply = await self._create(messages, False, max_tokens)
            except openai.BadRequestError as again:
                raise LLMError(f"LLM {self.name} refused the request: {again}") from again
        for kind, tokens in _usage(reply).items():
            LLM_TOKENS.labels(kind.removesuffix("_tokens")).inc(tokens)
        return reply

    async def _create(
        self, messages: Sequence[ChatTurn], json_mode: bool, max_tokens: int | None
    ) -> dict[str, Any]:
        """One completion, as the JSON object it came in ({} if it is none); a refused request
        stays `BadRequestError`, other failures `LLMError`."""
        body = self._body(messages)
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        try:
            reply = await self._client.post(_COMPLETIONS, body=body, cast_to=object)
        except openai.BadRequestError:
            raise
        except openai.OpenAIError as e:
            raise LLMError(f"LLM {self.name} unavailable: {e}") from e
        if isinstance(reply, str):  # JSON under another content type: the client gives text
            try:
                reply = json.loads(reply)
            except ValueError:
                reply = None
        return reply if isinstance(reply, dict) else {}

    async def stream(self, messages: Sequence[ChatTurn]) -> AsyncIterator[str]:
        """Raises `LLMStreamCut` when the stream ends before the server said it finished."""
        with _accounted("stream"):
            finished = started = False
            try:
                chunks = await self._client.post(
                    _COMPLETIONS,
                    body={**self._body(messages), "stream": True},
                    cast_to=object,
                    stream=True,
                    # Each chunk as the JSON it came in: building the client's typed chunk of
                    # every token took about 0.1 ms of CPU, more than all the rest per token.
                    stream_cls=AsyncStream[object],
                )
                async for chunk in chunks:
                    piece, ends = _delta(chunk)
                    if piece:
                        started = True
                        yield piece
                    finished = finished or ends
            except openai.OpenAIError as e:
                if started:
                    raise LLMStreamCut(f"LLM {self.name} stream broke off: {e}") from e
                raise LLMError(f"LLM {self.name} unavailable: {e}") from e
            if not finished:
                raise LLMStreamCut(f"LLM {self.name} stream stopped before the reply was finished")

    def _body(self, messages: Sequence[ChatTurn]) -> dict[str, Any]:
        wire = [{"role": m.role, "content": m.content} for m in messages]
        return {"model": self.name, "messages": wire, "temperature": 0}

    async def close(self) -> None:
        await self._client.close()


def _delta(chunk: object) -> tuple[str, bool]:
    """The text a streamed chunk adds (`choices[0].delta.content`) and whether it ends the
    reply (`choices[0].finish_reason`); a chunk without a choice (usage) adds nothing."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "", False
    choice = choices[0]
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return (content if isinstance(content, str) else ""), choice.get("finish_reason") is not None


def _choice(reply: dict[str, Any]) -> dict[str, Any] | None:
    """A whole reply's first choice; None when it has none."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    return choices[0]


def _message(reply: dict[str, Any]) -> dict[str, Any]:
    message = (_choice(reply) or {}).get("message")
    return message if isinstance(message, dict) else {}


def _usage(reply: dict[str, Any]) -> dict[str, int]:
    """The prompt and completion tokens the server counted, those it reported."""
    usage = reply.get("usage")
    if not isinstance(usage, dict):
        return {}
    return {
        kind: tokens
        for kind in ("prompt_tokens", "completion_tokens")
        if isinstance(tokens := usage.get(kind), int) and tokens >= 0
    }


def _reasoning(message: dict[str, Any]) -> str | None:
    """The reasoning a server sent beside the answer: `reasoning_content` (DeepSeek, vLLM) or
    `reasoning` (Ollama, newer vLLM). Neither is in the OpenAI schema."""
    for field in ("reasoning_content", "reasoning"):
        value = message.get(field)
        if isinstance(value, str) and value:
            return value
    return None


@contextmanager
def _accounted(operation: str) -> Iterator[None]:
    started = time.perf_counter()
    outcome = "error"
    try:
        # A stream yields while it runs: its span must not become its caller's current one.
        with tracing.span(f"llm {operation}", current=operation != "stream"):
            yield
        outcome = "ok"
    finally:
        LLM_CALLS.labels(operation, outcome).inc()
        LLM_SECONDS.labels(operation).observe(time.perf_counter() - started)


def open_llm(settings: LLMSettings, stack: AsyncExitStack) -> OpenAILLM | None:
    """The configured LLM, closed with the service; None: each stage uses its offline fallback."""
    if not settings.configured:
        return None
    llm = OpenAILLM(settings)
    stack.push_async_callback(llm.close)
    return llm
