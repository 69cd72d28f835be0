"""`make bench`: how soon a user sees something, and whether the answer prompt fits the LLM.

1. Latency, the whole pipeline (the four services in this process over a real NATS server,
   the client over gRPC `StreamChat`): from sending the request to the first progress event
   (`plan_ready`) and to the first answer token, with a scripted LLM that streams the answer
   at a fixed rate (the planner is the rules planner: the LLM only answers, as HuggingGPT's
   stage 4). Median and p99 over BENCH_RESPONDER_REQUESTS sequential requests.
2. Context budget: a report whose task results hold far more text than the LLM's context;
   the prompt the responder actually sent (counted at the scripted server) against the budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ChatMessage,
    ChatRequest,
    ExecutionReport,
    Kind,
    TaskOutput,
    TaskPlan,
    TaskResult,
    TaskStatus,
)

from bench.stats import p99, write_results
from services.cli.cluster import start_nats_server
from services.common.llm import OpenAILLM
from services.common.settings import LLMSettings
from services.common.tokens import count_tokens
from services.responder.prompt import budget_for
from services.responder.respond import respond
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM, square_png

REQUESTS = int(os.environ.get("BENCH_RESPONDER_REQUESTS", "30"))
TOKEN_INTERVAL_S = 0.02  # the scripted LLM streams 50 words a second
ANSWER = " ".join(["word"] * 40)
CONTEXTS = [2048, 4096, 8192, 32768]
RESULTS = Path("bench/results/responder.json")


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": statistics.median(ordered) * 1000, "p99_ms": p99(ordered) * 1000}


async def _latency(nats_url: str, llm: ScriptedLLM) -> dict[str, Any]:
    env = {**CANNY_ONLY, "CHORUS_LLM_BASE_URL": llm.base_url, "CHORUS_PLANNER": "rules"}
    async with (
        running_stack(nats_url, env) as settings,
        grpc.aio.insecure_channel(settings.grpc_addr) as channel,
    ):
        stub = chorus_pb2_grpc.ChorusStub(channel)

        async def chunks() -> AsyncIterator[ArtifactChunk]:
            yield ArtifactChunk(name="photo.png", data=square_png(128))

        photo = await stub.UploadArtifact(chunks())
        firsts: dict[str, list[float]] = {"progress": [], "token": [], "done": []}
        for i in range(REQUESTS + 1):  # the first is a warm-up
            timings = await _one(stub, photo)
            if i:
                for key, value in timings.items():
                    firsts[key].append(value)
    return {
        "requests": REQUESTS,
        "llm_stream": f"{len(ANSWER.split())} words, one every {TOKEN_INTERVAL_S * 1000:.0f} ms",
        "request": "Find the edges in photo.png (1 task: canny-control, builtin)",
        "first_progress_event": _stats(firsts["progress"]),
        "first_answer_token": _stats(firsts["token"]),
        "done": _stats(firsts["done"]),
    }


async def _one(stub: chorus_pb2_grpc.ChorusStub, photo: ArtifactRef) -> dict[str, float]:
    message = ChatMessage(role="user", content="Find the edges in photo.png", artifacts=[photo])
    started = time.perf_counter()
    seen: dict[str, float] = {}
    async for event in stub.StreamChat(ChatRequest(messages=[message])):
        now = time.perf_counter() - started
        seen.setdefault("progress", now)
        if event.WhichOneof("event") == "answer_token":
            seen.setdefault("token", now)
        if event.HasField("done"):
            assert event.done.results[0].status == TaskStatus.TASK_STATUS_SUCCEEDED
            seen["done"] = now
    return seen


def _big_report() -> ExecutionReport:
    """Three text results of ~20k tokens each and one generated file."""
    request = ChatRequest(
        request_id="bench",
        messages=[ChatMessage(role="user", content="Transcribe, summarize and draw it")],
    )
    report = ExecutionReport(request_id="bench", plan=TaskPlan(request_id="bench", request=request))
    long_text = "The speaker talks about the weather, the harvest and the market. " * 1500
    for i, task in enumerate(["automatic-speech-recognition", "summarization", "translation"]):
        report.results.append(
            TaskResult(
                task_id=i,
                task=task,
                model=f"some/{task}-model",
                selection_reason="most downloaded",
                status=TaskStatus.TASK_STATUS_SUCCEEDED,
                outputs=[TaskOutput(name="text", text=long_text)],
            )
        )
    image = ArtifactRef(id="x-drawing.png", name="drawing.png", media_type="image/png")
    image.kind = Kind.KIND_IMAGE
    report.results.append(
        TaskResult(
            task_id=3,
            task="text-to-image",
            model="some/diffusion",
            status=TaskStatus.TASK_STATUS_SUCCEEDED,
            outputs=[TaskOutput(name="image", artifact=image)],
        )
    )
    return report


async def _budget(llm: ScriptedLLM) -> list[dict[str, Any]]:
    report = _big_report()
    raw = sum(count_tokens(o.text) for r in report.results for o in r.outputs)
    rows = []
    for context in CONTEXTS:
        client = OpenAILLM(LLMSettings(llm.base_url, "k", "bench", 30.0, 0, context))

        async def ignore(piece: str) -> None:
            pass

        before = len(llm.requests)
        response = await respond(report, client, ignore, context_tokens=context)
        await client.close()
        sent = llm.requests[before]["messages"]
        rows.append(
            {
                "context_tokens": context,
                "prompt_budget_tokens": budget_for(context),
                "prompt_sent_tokens": sum(count_tokens(m["content"]) for m in sent),
                "prompt_sent_chars": sum(len(m["content"]) for m in sent),
                "task_result_tokens_before_cutting": raw,
                "note": next((n for n in response.notes if "shortened" in n), ""),
            }
        )
    return rows


async def _main(nats_url: str) -> dict[str, Any]:
    llm = ScriptedLLM(replies=[ANSWER], token_interval_s=TOKEN_INTERVAL_S).start()
    try:
        latency = await _latency(nats_url, llm)
        llm.token_interval_s = 0.0
        budget = await _budget(llm)
    finally:
        llm.stop()
    return {"latency": latency, "context_budget": budget}


def main() -> int:
    with tempfile.TemporaryDirectory() as store:
        proc, url = start_nats_server(Path(store))
        try:
            figures = asyncio.run(_main(url))
        finally:
            proc.terminate()
            proc.wait(10)
    figures["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    figures["command"] = "make bench (python -m bench.responder)"
    print(json.dumps(figures, indent=2))
    write_results(RESULTS, figures)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
