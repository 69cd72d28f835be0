"""The LLM client's report of how a reply ended, through the real `openai` client."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.common.llm import ChatTurn, LLMError, OpenAILLM, _delta
from services.common.settings import LLMSettings
from tests.support import Answer, ScriptedLLM

ASK = [ChatTurn("user", "plan this")]


def _llm(server: ScriptedLLM) -> OpenAILLM:
    return OpenAILLM(LLMSettings(server.base_url, "k", "scripted", 10.0, 0))


async def test_a_completion_says_why_it_stopped_and_what_was_reasoned(
    scripted_llm: ScriptedLLM,
) -> None:
    scripted_llm.replies = [
        Answer("[1, 2", "length", reasoning="first [x]", completion_tokens=7),
        Answer("[]", reasoning="ollama thinks", reasoning_field="reasoning"),
        Answer(None, "length", reasoning="ran out while thinking"),
        Answer("[]"),
    ]
    llm = _llm(scripted_llm)
    cut = await llm.completion(ASK, max_tokens=50)
    assert (cut.text, cut.finish_reason, cut.cut_off) == ("[1, 2", "length", True)
    assert (cut.reasoning, cut.completion_tokens) == ("first [x]", 7)
    assert scripted_llm.requests[0]["max_tokens"] == 50
    assert (await llm.completion(ASK)).reasoning == "ollama thinks"
    thinking = await llm.completion(ASK)
    assert (thinking.text, thinking.reasoning) == ("", "ran out while thinking")
    plain = await llm.completion(ASK)
    assert (plain.finish_reason, plain.reasoning, plain.cut_off) == ("stop", None, False)
    assert "max_tokens" not in scripted_llm.requests[1]


async def test_complete_still_gives_the_text_and_refuses_an_empty_reply(
    scripted_llm: ScriptedLLM,
) -> None:
    scripted_llm.replies = [Answer("hello", reasoning="hmm"), Answer(None, reasoning="hmm")]
    llm = _llm(scripted_llm)
    assert await llm.complete(ASK) == "hello"
    with pytest.raises(LLMError, match="no content"):
        await llm.complete(ASK)


async def test_one_connection_carries_every_call_and_stream(scripted_llm: ScriptedLLM) -> None:
    """The client keeps its HTTP connection: no TCP handshake per call (the scripted server
    keeps connections alive, as real LLM servers do)."""
    scripted_llm.replies = ["one two three"]
    llm = _llm(scripted_llm)
    try:
        for _ in range(3):
            assert await llm.complete(ASK) == "one two three"
        assert "".join([piece async for piece in llm.stream(ASK)]) == "one two three"
        assert await llm.complete(ASK) == "one two three"
    finally:
        await llm.close()
    assert scripted_llm.connections == 1


async def test_the_request_body_is_the_prompt_as_given(scripted_llm: ScriptedLLM) -> None:
    """The client sends the body as built (no per-message transform): the model, the turns,
    temperature 0, and JSON mode, a token limit or streaming only when asked for."""
    scripted_llm.replies = ["fine"]
    llm = _llm(scripted_llm)
    turns = [ChatTurn("system", "be brief"), ChatTurn("user", "héllo\n{}")]
    try:
        await llm.completion(turns, json_mode=True, max_tokens=9)
        await llm.complete(turns)
        assert "".join([piece async for piece in llm.stream(turns)]) == "fine"
    finally:
        await llm.close()
    wire = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo\n{}"}]
    base = {"model": "scripted", "messages": wire, "temperature": 0}
    assert scripted_llm.requests == [
        {**base, "response_format": {"type": "json_object"}, "max_tokens": 9},
        base,
        {**base, "stream": True},
    ]


@pytest.mark.parametrize(
    ("chunk", "read"),
    [
        ({"choices": [{"delta": {"content": "hi"}, "finish_reason": None}]}, ("hi", False)),
        ({"choices": [{"delta": {}, "finish_reason": "stop"}]}, ("", True)),
        ({"choices": [], "usage": {"completion_tokens": 3}}, ("", False)),
        ({"choices": [{"delta": {"content": None, "role": "assistant"}}]}, ("", False)),
        ({"choices": [{"delta": {"content": 7}}]}, ("", False)),
        ({"choices": "nonsense"}, ("", False)),
        (["not", "a", "chunk"], ("", False)),
    ],
)
def test_a_streamed_chunk_of_any_shape_adds_only_its_text(
    chunk: object, read: tuple[str, bool]
) -> None:
    """Chunks are read as the JSON they came in (no typed model per token): one of another
    shape adds nothing rather than breaking the answer."""
    assert _delta(chunk) == read


class _RawReplies:
    """An HTTP server answering each POST with the next (content type, body) as it is."""

    def __init__(self, replies: list[tuple[str, bytes]]) -> None:
        replies = list(replies)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                content_type, body = replies.pop(0)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_JSON = "application/json"
_FINE = {"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}


async def test_a_whole_reply_of_any_shape_is_read_or_refused_clearly() -> None:
    """Whole replies are read as the JSON they came in too: one of another shape is an
    `LLMError` (or an empty answer), never a crash of the stage that asked."""
    replies = [
        (_JSON, json.dumps({"choices": "nonsense"}).encode()),
        (
            _JSON,
            json.dumps({"choices": [{"message": {"content": 7}, "finish_reason": 1}]}).encode(),
        ),
        (_JSON, json.dumps(["not", "a", "completion"]).encode()),
        ("text/plain", json.dumps({**_FINE, "usage": {"completion_tokens": "x"}}).encode()),
        ("text/html", b"<html>busy</html>"),
    ]
    server = _RawReplies(replies * 2)
    llm = OpenAILLM(LLMSettings(server.base_url, "k", "scripted", 10.0, 0))
    try:
        with pytest.raises(LLMError, match="no choices"):
            await llm.completion(ASK)
        odd = await llm.completion(ASK)
        assert (odd.text, odd.finish_reason, odd.cut_off) == ("", None, False)
        with pytest.raises(LLMError, match="no choices"):
            await llm.completion(ASK)
        fine = await llm.completion(ASK)  # JSON under another content type is still read
        assert (fine.text, fine.finish_reason, fine.completion_tokens) == ("fine", "stop", None)
        with pytest.raises(LLMError, match="no choices"):
            await llm.completion(ASK)
        for _ in range(3):
            with pytest.raises(LLMError, match="no content"):
                await llm.complete(ASK)
        assert await llm.complete(ASK) == "fine"
        with pytest.raises(LLMError, match="no content"):
            await llm.complete(ASK)
    finally:
        await llm.close()
        server.stop()
