"""Planner latency without the LLM: `parse_plan` alone, and the whole planning stage (`plan`:
prompt, parse, repair round where the reply is invalid, the `TaskPlan`) against an LLM that
answers at once, per reply. With `--against DIR`, another checkout (main's, say) is timed
side by side in the same run, rounds alternating, so that the two figures share the machine's
noise.

    python -m bench.planner_latency [--against /tmp/chorus-main] [--rounds 3] [--sample 5000]

Corpus (data: $CHORUS_SHARED_DATA or <repo>/../shared/data): the clean TaskBench replies of
`bench.planner_robustness` and a seeded sample of their corruptions. Every tree reads the same
replies; a reply's `finish_reason` is not passed (older trees cannot take it), so a cut-off
variant is read as any other text. Each tree runs in its own process (`python` with the tree
first on PYTHONPATH); the figures are the medians over rounds of each round's median and p99,
and the ratios the medians over rounds of the ratio within a round (the two trees back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "planner_latency.json"


def _worker(corpus_file: str) -> None:
    """Times this process's tree (whatever `services` is first on the path) over the corpus."""
    from chorus.v1.messages_pb2 import ArtifactRef, ChatMessage, ChatRequest

    import services.planner.plan as stage
    from services.planner.parse import PlanError, parse_plan

    corpus = json.loads(Path(corpus_file).read_text())

    class InstantLLM:
        """Answers at once: `complete` for trees before the LLM reported how replies ended."""

        name = "instant"
        reply = ""

        async def complete(self, messages: Any, *, json_mode: bool = False) -> str:
            return self.reply

        async def completion(self, messages: Any, **options: Any) -> Any:
            from services.common.llm import Completion  # type: ignore[attr-defined,unused-ignore]

            return Completion(self.reply, "stop")

        def stream(self, messages: Any) -> Any:
            raise NotImplementedError

    def request(item: dict[str, Any]) -> ChatRequest:
        files = [ArtifactRef(id=n, name=n, kind=k) for n, k in item["files"]]
        message = ChatMessage(role="user", content=item["request"], artifacts=files)
        return ChatRequest(request_id="r", messages=[message])

    async def run() -> dict[str, list[float]]:
        llm = InstantLLM()
        parse_s: list[float] = []
        plan_s: list[float] = []
        for item in corpus:
            resources = {n: ArtifactRef(id=n, name=n, kind=k) for n, k in item["files"]}
            start = time.perf_counter()
            with contextlib.suppress(PlanError):
                parse_plan(item["reply"], resources)
            parse_s.append(time.perf_counter() - start)
            llm.reply = item["reply"]
            chat = request(item)
            start = time.perf_counter()
            await stage.plan(chat, llm)
            plan_s.append(time.perf_counter() - start)
        return {"parse_plan": parse_s, "plan": plan_s}

    logging_off()
    timings = asyncio.run(run())
    print(json.dumps({"tree": str(Path(stage.__file__).parents[2]), **timings}))


def logging_off() -> None:
    import logging

    logging.disable(logging.WARNING)  # the repair round's warnings, once per invalid reply


def build_corpus(sample: int) -> list[dict[str, Any]]:
    from bench.planner_robustness import load_corpus, variants
    from bench.taskbench_rules import data_dir

    taskbench, _ = load_corpus(data_dir())
    rng = random.Random(2023)
    corrupted = [(c, v) for c in taskbench for v in variants(c)]
    chosen = [(c, c.reply, "clean") for c in taskbench]
    picked = rng.sample(corrupted, min(sample, len(corrupted)))
    chosen += [(c, v.reply, "corrupted") for c, v in picked]
    return [
        {
            "request": clean.request,
            "reply": reply,
            "files": [[ref.name, ref.kind] for ref in clean.resources.values()],
            "group": group,
        }
        for clean, reply, group in chosen
    ]


def _time_tree(tree: Path, corpus_file: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'protos'}"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", corpus_file],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _figures(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1e6,
    }


def _per_round(
    rounds: list[dict[str, Any]], groups: list[str]
) -> dict[str, list[dict[str, float]]]:
    """Per measure and group of replies (clean, corrupted, all): each round's median and p99."""
    return {
        f"{measure}, {group}": [
            _figures([t for t, g in zip(r[measure], groups, strict=True) if group in (g, "all")])
            for r in rounds
        ]
        for measure in ("parse_plan", "plan")
        for group in ("clean", "corrupted", "all")
    }


def _median(figures: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(f[k] for f in figures), 1) for k in figures[0]}


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--against", type=Path, help="another checkout to time side by side")
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--sample", type=int, default=5000, help="corrupted replies in the corpus")
    args.add_argument("--worker", help=argparse.SUPPRESS)
    options = args.parse_args()
    if options.worker:
        _worker(options.worker)
        return 0
    from bench.planner_robustness import PREDICTIONS
    from bench.taskbench_rules import data_dir

    if not (data_dir() / PREDICTIONS).is_file():
        print(f"skipped: no TaskBench predictions under {data_dir()}")
        return 0
    trees = {"this": ROOT} | ({"against": options.against.resolve()} if options.against else {})
    with tempfile.TemporaryDirectory() as tmp:
        corpus_file = str(Path(tmp) / "corpus.json")
        corpus = build_corpus(options.sample)
        Path(corpus_file).write_text(json.dumps(corpus))
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for n in range(options.rounds):
            # Back to back, first one then the other first, so both see the same noise.
            for name, tree in list(trees.items())[:: 1 if n % 2 == 0 else -1]:
                rounds[name].append(_time_tree(tree, corpus_file))
    groups = [c["group"] for c in corpus]
    figures = {name: _per_round(r, groups) for name, r in rounds.items()}
    results: dict[str, Any] = {
        "replies": len(corpus),
        "rounds": options.rounds,
        "trees": {
            name: {"path": rounds[name][0]["tree"]}
            | {m: _median(f) for m, f in figures[name].items()}
            for name in trees
        },
    }
    if options.against:  # the median over rounds of the ratio within each round
        this, other = figures["this"], figures["against"]
        results["ratio_this_over_against"] = {
            m: {
                k: round(
                    statistics.median(a[k] / b[k] for a, b in zip(this[m], other[m], strict=True)),
                    2,
                )
                for k in ("median_us", "p99_us")
            }
            for m in this
        }
    write_results(RESULTS, results)
    ratios = results.get("ratio_this_over_against", {})
    for name, tree in results["trees"].items():
        for measure, f in tree.items():
            if measure != "path":
                line = f"{name:8} {measure:22} median {f['median_us']:7.1f} us, p99 {f['p99_us']:7.1f} us"
                ratio = ratios.get(measure) if name == "this" else None
                print(line + (f"  (x{ratio['median_us']}, x{ratio['p99_us']})" if ratio else ""))
    print(f"{len(corpus)} replies, {options.rounds} rounds; wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
