"""`make bench`: the selector's speed and its LLM calls, on the real bus where it matters.

    python -m bench.selector      # data: $CHORUS_SHARED_DATA or <repo>/../shared/data

1. Selection latency without an LLM call: the live worker registry (a real JetStream KV
   watch) holding 1, 10 and 100 replicas, the catalog with HuggingGPT's 673 models imported,
   one selection = `registry.serving(task)` + `rank` + `decide` for a task of the request.
   "local": candidates are what replicas serve; "hybrid": one replica also offers remote
   inference, so every catalog model of the task is ranked too.
2. Scheduling overhead: a 3-level DAG (two roots, two middle tasks, one join) of no-op tasks
   (an echo replica that waits TASK_S and answers) through the real selector service and
   NATS: the time from a task's last input being published to its invocation arriving, and
   the DAG's wall time against the sum of its critical path (3 x the measured task time).
3. LLM calls per request: TaskBench's 7,546 HuggingFace-domain requests planned by the rules
   planner, against the imported catalog with every model reachable (HuggingGPT's hybrid
   mode, the LLM doing its text tasks): HuggingGPT asks once per task with more than one
   candidate; Chorus asks once per request with any such task.

Figures go to bench/results/selector.json. Parts 1 and 3 read ../shared/data; without it
part 1 runs on the shipped catalog and part 3 is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
from chorus.v1.messages_pb2 import (
    ChatMessage,
    ChatRequest,
    ExecutionReport,
    GeneratedRef,
    Kind,
    Task,
    TaskArgument,
    TaskPlan,
)
from chorus.v1.workers_pb2 import ServedModel, WorkerInfo

from bench.stats import p99, write_results
from services.cli.cluster import start_nats_server
from services.common import bus, subjects
from services.common.routes import LLM_ROUTE, REMOTE_ROUTE
from services.common.tasks import LLM_TASKS
from services.common.workers import WorkerAnnouncer, WorkerRegistry, open_worker_bucket
from services.selector.catalog import Catalog, import_hugginggpt, load_catalog
from services.selector.rank import Candidate, RequestFacts, rank
from services.selector.select import choose_models, decide, open_tasks
from tests.echo_replica import EchoReplica
from tests.integration.stack import running_stack

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "selector.json"
SELECTIONS = int(os.environ.get("BENCH_SELECTIONS", "3000"))
DAG_RUNS = int(os.environ.get("BENCH_DAG_RUNS", "40"))
TASK_S = 0.05
MODELS_PER_REPLICA = 3
REQUESTS = [
    "Describe the picture example.jpg and tell me what objects are in it",
    "Translate 'good morning' to French and read it aloud",
    "这张图片里有什么",
    "What emotion does this review show: 'I loved every minute'",
]


def _data_dir() -> Path:
    return Path(os.environ.get("CHORUS_SHARED_DATA") or ROOT.parent / "shared" / "data")


def _catalog() -> tuple[Catalog, str]:
    catalog = load_catalog({"CHORUS_CATALOG": "/nonexistent"})
    p0 = _data_dir() / "jarvis" / "p0_models.jsonl"
    if not p0.is_file():
        return catalog, "shipped default only (no ../shared/data)"
    entries, _ = import_hugginggpt(p0)
    catalog.add(entries)
    return catalog, f"shipped default + {len(entries)} imported from p0_models.jsonl"


def _quantiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p99": p99(ordered),
        "n": len(ordered),
    }


# --- 1. selection latency ---------------------------------------------------------------------


def _replicas(catalog: Catalog, count: int, rng: random.Random) -> list[WorkerInfo]:
    pairs = [(e.task, e.id) for e in catalog.entries.values()]
    return [
        WorkerInfo(
            worker_id=f"replica-{i}",
            device="cuda:0",
            capacity=4,
            in_flight=rng.randint(0, 4),
            models=[ServedModel(task=t, model=m) for t, m in rng.sample(pairs, MODELS_PER_REPLICA)],
        )
        for i in range(count)
    ]


async def _selection_latency(nats_url: str, catalog: Catalog) -> dict[str, Any]:
    rng = random.Random(7)
    tasks = sorted({e.task for e in catalog.entries.values()})
    figures: dict[str, Any] = {}
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    kv = await open_worker_bucket(js, 600, 1)
    previous: list[WorkerInfo] = []
    for count in (1, 10, 100):
        for worker in previous:
            await kv.delete(worker.worker_id)
        workers = previous = _replicas(catalog, count, rng)
        for mode in ("local", "hybrid"):
            if mode == "hybrid":
                remote = [ServedModel(task=t, model=REMOTE_ROUTE) for t in tasks]
                workers[0].models.extend(remote)
            for worker in workers:
                await WorkerAnnouncer(js, worker, 600).announce()
            registry = WorkerRegistry(js, 600, 1)
            await registry.start()
            samples = []
            for i in range(SELECTIONS):
                task = tasks[i % len(tasks)]
                facts = RequestFacts.of(REQUESTS[i % len(REQUESTS)])
                started = time.perf_counter()
                candidates = rank(task, facts, registry.serving(task), catalog)
                if candidates:
                    decide(task, candidates, None)
                samples.append((time.perf_counter() - started) * 1e6)
            await registry.stop()
            figures[f"{count}_replicas_{mode}_us"] = _quantiles(samples)
            print(
                f"  {count:>3} replicas, {mode:<6}: {_fmt(figures[f'{count}_replicas_{mode}_us'])} µs"
            )
    await nc.close()
    return figures


# --- 2. scheduling overhead -------------------------------------------------------------------

_SERVED = [
    ("text-generation", "noop/gen"),
    ("summarization", "noop/sum"),
    ("translation", "noop/tr"),
    ("sentence-similarity", "noop/sim"),
]


def _dag(request_id: str) -> TaskPlan:
    """0, 1 -> 2 <- 0, 3 <- 1 -> 4 <- 2, 3: two roots, two middle tasks, one join."""

    def text(name: str, source: int | None, literal: str = "x") -> TaskArgument:
        if source is None:
            return TaskArgument(name=name, text=literal)
        return TaskArgument(name=name, generated=GeneratedRef(task_id=source, kind=Kind.KIND_TEXT))

    tasks = [
        Task(id=0, task="text-generation", args=[text("text", None)]),
        Task(id=1, task="text-generation", args=[text("text", None)]),
        Task(id=2, task="summarization", deps=[0], args=[text("text", 0)]),
        Task(id=3, task="translation", deps=[1], args=[text("text", 1)]),
        Task(
            id=4, task="sentence-similarity", deps=[2, 3], args=[text("text1", 2), text("text2", 3)]
        ),
    ]
    request = ChatRequest(request_id=request_id, messages=[ChatMessage(role="user", content="r")])
    return TaskPlan(request_id=request_id, request=request, tasks=tasks)


async def _scheduling(nats_url: str) -> dict[str, Any]:
    waits: list[float] = []  # last input published -> invocation arrived, per non-root task
    first: list[float] = []  # plan published -> root invocation arrived
    walls: list[float] = []
    paths: list[float] = []
    async with running_stack(nats_url, services=("selector",)):
        replica = await EchoReplica(nats_url, _SERVED, delay_s=TASK_S).start()
        await asyncio.sleep(0.5)  # the selector's registry watch sees the replica
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        reports = await js.pull_subscribe(subjects.REPORT, durable="bench-reports")
        for run in range(DAG_RUNS + 1):
            plan = _dag(f"dag-{run}")
            published = time.time()
            await bus.publish(js, subjects.PLAN, plan)
            (msg,) = await reports.fetch(1, timeout=30)
            finished = time.time()
            await msg.ack()
            report = ExecutionReport.FromString(msg.data)
            assert all(r.error == "" for r in report.results), report.results
            if run == 0:
                continue  # warm-up
            arrived = {i.task_id: t for i, t in replica.received if i.request_id == plan.request_id}
            answered = {t: s for (r, t), s in replica.answered.items() if r == plan.request_id}
            for task in plan.tasks:
                inputs = [answered[d] for d in task.deps]
                if inputs:
                    waits.append((arrived[task.id] - max(inputs)) * 1e3)
                else:
                    first.append((arrived[task.id] - published) * 1e3)
            walls.append((finished - published) * 1e3)
            # Critical path 0 -> 2 -> 4 (or 1 -> 3 -> 4): three tasks, each as long as it took.
            ran = {t: answered[t] - arrived[t] for t in answered}
            paths.append(max(ran[0] + ran[2], ran[1] + ran[3]) * 1e3 + ran[4] * 1e3)
        await nc.close()
        await replica.stop()
    figures: dict[str, Any] = {
        "task_seconds": TASK_S,
        "input_to_dispatch_ms": _quantiles(waits),
        "plan_to_first_dispatch_ms": _quantiles(first),
        "dag_wall_ms": _quantiles(walls),
        "critical_path_ms": _quantiles(paths),
        "wall_over_critical_path": statistics.median(
            w / p for w, p in zip(walls, paths, strict=True)
        ),
    }
    print(f"  last input -> dispatch: {_fmt(figures['input_to_dispatch_ms'])} ms")
    print(f"  plan -> first dispatch: {_fmt(figures['plan_to_first_dispatch_ms'])} ms")
    print(
        f"  DAG wall {_fmt(figures['dag_wall_ms'])} ms vs critical path "
        f"{_fmt(figures['critical_path_ms'])} ms: ratio {figures['wall_over_critical_path']:.2f}"
    )
    return figures


# --- 3. LLM calls per request -----------------------------------------------------------------


class _CountingLLM:
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, messages: Sequence[Any], *, json_mode: bool = False) -> str:
        self.calls += 1
        return "{}"

    async def stream(self, messages: Sequence[Any]) -> Any:
        yield ""


def _hugginggpt_calls(tasks: Sequence[Task], catalog: Catalog) -> int:
    """awesome_chat.py: the LLM's text tasks and ControlNet tasks need no choice; any other
    task with more than one of its top-10 catalog models available costs one call."""
    calls = 0
    for task in tasks:
        if task.task in LLM_TASKS or task.task.endswith(("-control", "-text-to-image")):
            continue
        calls += len(catalog.for_task(task.task)[:10]) > 1
    return calls


async def _llm_calls(catalog: Catalog) -> dict[str, Any] | None:
    requests = _data_dir() / "taskbench" / "huggingface" / "user_requests.json"
    if not requests.is_file():
        print("  skipped: no TaskBench data (set CHORUS_SHARED_DATA)")
        return None
    from services.planner.rules import plan_by_rules

    texts = [json.loads(line)["user_request"] for line in requests.read_text().splitlines() if line]
    every_task = sorted({e.task for e in catalog.entries.values()} | set(LLM_TASKS))
    hybrid = WorkerInfo(
        worker_id="hybrid",
        capacity=4,
        models=[ServedModel(task=t, model=REMOTE_ROUTE) for t in every_task]
        + [ServedModel(task=t, model=LLM_ROUTE) for t in LLM_TASKS],
    )
    original = chorus = tasks_total = 0
    for text in texts:
        tasks = plan_by_rules(text, {})
        facts = RequestFacts.of(text)
        llm = _CountingLLM()

        def candidates(task: str, facts: RequestFacts = facts) -> list[Candidate]:
            return rank(task, facts, [hybrid], catalog)

        undecided = open_tasks(tasks, candidates)
        await choose_models(text, undecided, llm)
        chorus += llm.calls
        original += _hugginggpt_calls(tasks, catalog)
        tasks_total += len(tasks)
    figures = {
        "requests": len(texts),
        "tasks": tasks_total,
        "hugginggpt_calls": original,
        "chorus_calls": chorus,
        "hugginggpt_calls_per_request": original / len(texts),
        "chorus_calls_per_request": chorus / len(texts),
    }
    print(
        f"  {len(texts)} requests, {tasks_total} tasks: HuggingGPT {original} calls "
        f"({original / len(texts):.2f}/request), Chorus {chorus} ({chorus / len(texts):.2f}/request)"
    )
    return figures


def _fmt(q: dict[str, float]) -> str:
    return f"median {q['median']:.2f}, p99 {q['p99']:.2f}"


async def _main() -> None:
    catalog, source = _catalog()
    print(f"selector bench: catalog of {len(catalog.entries)} models ({source})")
    results: dict[str, Any] = {"catalog_models": len(catalog.entries), "catalog": source}
    with tempfile.TemporaryDirectory() as store:
        proc, url = start_nats_server(Path(store))
        try:
            print("1. selection latency (no LLM call):")
            results["selection_latency"] = await _selection_latency(url, catalog)
            print(f"2. scheduling overhead, 3-level DAG of {TASK_S * 1e3:.0f} ms no-op tasks:")
            results["scheduling"] = await _scheduling(url)
        finally:
            proc.terminate()
            proc.wait(10)
    print("3. LLM calls per request:")
    results["llm_calls"] = await _llm_calls(catalog)
    write_results(RESULTS, results)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(_main())
