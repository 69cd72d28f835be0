"""The LLM behind one small protocol, with the `openai` client as the real implementation."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Protocol, cast

import openai
from openai import AsyncOpenAI, omit
from openai.types.chat import ChatCompletion, ChatCompletionMessage, ChatCompletionMessageParam
from prometheus_client import Counter, Histogram

from services.common.settings import LLMSettings

log = logging.getLogger(__name__)
LLM_CALLS = Counter(
    "chorus_llm_calls_total", "LLM calls by operation and outcome.", ["op", "outcome"]
)
LLM_SECONDS = Histogram("chorus_llm_seconds", "Time an LLM call took.", ["op"])
LLM_TOKENS = Counter("chorus_llm_tokens_total", "Tokens the LLM reported using.", ["kind"])


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
            if not reply.choices or reply.choices[0].message.content is None:
                raise LLMError(f"LLM {self.name} returned no content")
            return reply.choices[0].message.content

    async def completion(
        self,
        messages: Sequence[ChatTurn],
        *,
        json_mode: bool = False,
        max_tokens: int | None = None,
    ) -> Completion:
        with _accounted("complete"):
            reply = await self._reply(messages, json_mode, max_tokens)
            if not reply.choices:
                raise LLMError(f"LLM {self.name} returned no choices")
            choice = reply.choices[0]
            return Completion(
                text=choice.message.content or "",
                finish_reason=choice.finish_reason,
                reasoning=_reasoning(choice.message),
                completion_tokens=reply.usage.completion_tokens if reply.usage else None,
            )

    async def _reply(
        self, messages: Sequence[ChatTurn], json_mode: bool, max_tokens: int | None
    ) -> ChatCompletion:
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
        if reply.usage:
            LLM_TOKENS.labels("prompt").inc(reply.usage.prompt_tokens)
            LLM_TOKENS.labels("completion").inc(reply.usage.completion_tokens)
        return reply

    async def _create(
        self, messages: Sequence[ChatTurn], json_mode: bool, max_tokens: int | None
    ) -> ChatCompletion:
        """One completion; a refused request stays `BadRequestError`, other failures `LLMError`."""
        try:
            return await self._client.chat.completions.create(
                model=self.name,
                messages=_wire(messages),
                temperature=0,
                response_format={"type": "json_object"} if json_mode else omit,
                max_tokens=omit if max_tokens is None else max_tokens,
            )
        except openai.BadRequestError:
            raise
        except openai.OpenAIError as e:
            raise LLMError(f"LLM {self.name} unavailable: {e}") from e

    async def stream(self, messages: Sequence[ChatTurn]) -> AsyncIterator[str]:
        """Raises `LLMStreamCut` when the stream ends before the server said it finished."""
        with _accounted("stream"):
            finished = started = False
            try:
                chunks = await self._client.chat.completions.create(
                    model=self.name, messages=_wire(messages), temperature=0, stream=True
                )
                async for chunk in chunks:
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.delta.content:
                        started = True
                        yield choice.delta.content
                    finished = finished or choice.finish_reason is not None
            except openai.OpenAIError as e:
                if started:
                    raise LLMStreamCut(f"LLM {self.name} stream broke off: {e}") from e
                raise LLMError(f"LLM {self.name} unavailable: {e}") from e
            if not finished:
                raise LLMStreamCut(f"LLM {self.name} stream stopped before the reply was finished")

    async def close(self) -> None:
        await self._client.close()


def _wire(messages: Sequence[ChatTurn]) -> list[ChatCompletionMessageParam]:
    return [
        cast(ChatCompletionMessageParam, {"role": m.role, "content": m.content}) for m in messages
    ]


def _reasoning(message: ChatCompletionMessage) -> str | None:
    """The reasoning a server sent beside the answer: `reasoning_content` (DeepSeek, vLLM) or
    `reasoning` (Ollama, newer vLLM). Neither is in the OpenAI schema, so both are extras."""
    extra = message.model_extra or {}
    for field in ("reasoning_content", "reasoning"):
        value = extra.get(field)
        if isinstance(value, str) and value:
            return value
    return None


@contextmanager
def _accounted(operation: str) -> Iterator[None]:
    started = time.perf_counter()
    outcome = "error"
    try:
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
