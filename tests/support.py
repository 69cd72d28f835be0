"""Real parts for tests: a NATS server, a scripted OpenAI-compatible LLM, tiny models."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
from chorus.v1.messages_pb2 import ArtifactRef, ProgressEvent
from nats.js.api import DeliverPolicy
from PIL import Image, ImageDraw

from services.common import bus, subjects
from services.common.artifact_refs import ArtifactNotFound, kind_for, media_type_for


@dataclass(frozen=True)
class Answer:
    """A scripted reply with what a server says about it beside the text."""

    content: str | None
    finish_reason: str = "stop"  # "length": stopped at the token limit
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"  # DeepSeek and vLLM; Ollama says "reasoning"
    completion_tokens: int = 1


Reply = str | Answer | Callable[[list[dict[str, Any]]], str]


@dataclass
class ScriptedLLM:
    """An OpenAI-compatible `/v1/chat/completions` server answering from a script.

    Each call takes the next scripted reply (or the last one, repeated); a reply may be a
    function of the request's messages. Streaming sends the reply word by word, one word
    every `token_interval_s`, then a chunk with `finish_reason`; with `cut_after` set it
    closes the connection after that many words instead, as a server that dies mid-reply.
    """

    replies: list[Reply] = field(default_factory=list)
    delay_s: float = 0.0
    token_interval_s: float = 0.0
    cut_after: int | None = None
    json_mode_supported: bool = True  # False: answer 400 to `response_format`, as many servers do
    requests: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0  # TCP connections accepted: a client that keeps its own makes one
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedLLM:
        llm = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as real LLM servers: a client that keeps its connection is measured
            # with it (streams are sent chunked, so the connection outlives them too).
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: with Nagle's algorithm the second
            # waits for the client's delayed ACK (40 ms) on a connection that stays open.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                llm.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                llm.requests.append(body)
                if "response_format" in body and not llm.json_mode_supported:
                    error = {"error": {"message": "response_format is not supported"}}
                    self._send_json(error, status=400)
                    return
                time.sleep(llm.delay_s)
                reply = llm._next(body["messages"])
                if body.get("stream"):
                    self._stream(reply.content or "", body["model"])
                else:
                    self._send_json(_completion(reply, body["model"]))

            def _send_json(self, data: dict[str, Any], status: int = 200) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _stream(self, reply: str, model: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                words = reply.split(" ")
                for i, word in enumerate(words):
                    if llm.cut_after is not None and i >= llm.cut_after:
                        # The connection closes with no finish_reason and no [DONE].
                        self.close_connection = True
                        return
                    if i and llm.token_interval_s:
                        time.sleep(llm.token_interval_s)
                    piece = word + (" " if i < len(words) - 1 else "")
                    self._chunk(model, {"content": piece}, None)
                self._chunk(model, {}, "stop")
                self._send_chunk(b"data: [DONE]\n\n")
                self._send_chunk(b"")  # the end of the chunked body

            def _chunk(self, model: str, delta: dict[str, str], finish: str | None) -> None:
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                self._send_chunk(f"data: {json.dumps(chunk)}\n\n".encode())

            def _send_chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # benchmarks call it from dozens of requests at once

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _next(self, messages: list[dict[str, Any]]) -> Answer:
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Answer):
            return reply
        return Answer(reply(messages) if callable(reply) else reply)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def _completion(reply: Answer, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.reasoning is not None:
        message[reply.reasoning_field] = reply.reasoning
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "finish_reason": reply.finish_reason, "message": message}],
        "usage": {
            "prompt_tokens": 1,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": 1 + reply.completion_tokens,
        },
    }


TINY_WORDS = ("good", "bad", "movie", "great", "awful", "i")


def build_tiny_text_classifier(
    target: Path,
    *,
    words: Sequence[str] = TINY_WORDS,
    hidden_size: int = 16,
    layers: int = 1,
    heads: int = 2,
    max_positions: int = 64,
) -> Path:
    """A random-weight BERT text classifier with a word-level tokenizer, saved to `target`.

    Tests take the default (tiny); benchmarks ask for a bigger one.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    config = BertConfig(  # type: ignore[call-arg]
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


class MemoryArtifacts:
    """The artifact store's protocol over a dict (the NATS one is covered by integration tests)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[ArtifactRef, bytes]] = {}

    async def get(self, artifact_id: str) -> tuple[ArtifactRef, bytes]:
        if artifact_id not in self.items:
            raise ArtifactNotFound(f"artifact {artifact_id!r} does not exist or expired")
        return self.items[artifact_id]

    async def put(
        self, data: bytes, name: str, media_type: str | None = None, *, request_id: str = ""
    ) -> ArtifactRef:
        media_type = media_type or media_type_for(name)
        ref = ArtifactRef(
            id=uuid.uuid4().hex,
            name=name,
            media_type=media_type,
            kind=kind_for(media_type),
            size=len(data),
        )
        self.items[ref.id] = (ref, data)
        return ref


def local_run(task: str, model: str, max_batch: int = 1, options: Any = None) -> Any:
    """`execute`'s `run` for a local model through the real backend and pool, unbatched."""
    from services.executor.backends import LocalBackend
    from services.executor.handlers import HANDLERS
    from services.executor.models import LoadOptions, ModelSpec
    from services.executor.pool import ModelPool

    backend = LocalBackend(
        HANDLERS[task], ModelSpec(task, model), ModelPool(options or LoadOptions()), max_batch
    )

    async def run(inputs: Any) -> Any:
        return (await backend.infer(model, [inputs]))[0]

    return run


def marks_the_square(edges: Image.Image) -> bool:
    """Whether an edge map of `square_png` marks the square's left side (on it or the pixel
    beside it, where edge detectors differ) and nothing inside it or in the corner."""
    gray = edges.convert("L")
    side, middle = gray.width // 4, gray.width // 2
    on_side = max(gray.getpixel((x, middle)) for x in (side - 1, side))  # type: ignore[type-var]
    return on_side == 255 and gray.getpixel((middle, middle)) == 0 == gray.getpixel((2, 2))


# A 3-task chain of built-in canny operations: a real pipeline whose models cost nothing.
CANNY_CHAIN = json.dumps(
    [
        {"task": "canny-control", "id": 0, "dep": [], "args": {"image": "photo.png"}},
        {"task": "canny-control", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}},
        {"task": "canny-control", "id": 2, "dep": [1], "args": {"image": "<GENERATED>-1"}},
    ]
)
CANNY_CHAIN_ANSWER = "The edges are ready."


def canny_chain_llm() -> ScriptedLLM:
    """A started scripted LLM that plans every request as CANNY_CHAIN and answers with
    CANNY_CHAIN_ANSWER."""
    return ScriptedLLM(
        replies=[
            lambda m: CANNY_CHAIN if "Task planning" in m[0]["content"] else CANNY_CHAIN_ANSWER
        ]
    ).start()


def square_png(size: int = 48) -> bytes:
    """A PNG of a black square on white, the middle half of each side: clear edges to find."""
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle(
        [size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill="black"
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def stored_events(nats_url: str, request_id: str) -> list[tuple[str, ProgressEvent]]:
    """(message id, event) of every event the stream holds for the request, up to `done`, as
    a subscriber that comes after the request ended reads them."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    subject = subjects.event(request_id)
    try:
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        stored: list[tuple[str, ProgressEvent]] = []
        while not stored or not stored[-1][1].HasField("done"):
            msg = await sub.next_msg(timeout=10)
            stored.append(((msg.headers or {})[bus.MSG_ID], ProgressEvent.FromString(msg.data)))
        last = await js.get_last_msg(subjects.EVENTS_STREAM, subject)
        assert (last.headers or {})[bus.MSG_ID] == stored[-1][0]  # nothing stored after `done`
        return stored
    finally:
        await nc.close()
