"""`make bench`: how often the selector tells a request's language, before and after fastText.

The sample is bench/data/languages.jsonl: requests of the kind HuggingGPT gets, two in each
of 23 languages. "Before" is `guess_language` as it was before issue 14 (scripts and a few
common words, read from git); "after" is today's. Figures go to bench/results/language.json.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.before import BEFORE_ISSUE_14, module_at
from bench.stats import write_results
from services.selector import rank

SAMPLE = Path(__file__).parent / "data" / "languages.jsonl"
RESULTS = Path("bench/results/language.json")


def _score(guess: Callable[[str], str], sample: list[dict[str, str]]) -> dict[str, Any]:
    wrong = {}
    times = []
    for item in sample:
        started = time.perf_counter()
        got = guess(item["text"])
        times.append(time.perf_counter() - started)
        if got != item["lang"]:
            wrong[item["text"][:40]] = f"{item['lang']} taken for {got}"
    return {
        "right": len(sample) - len(wrong),
        "of": len(sample),
        "median_us": round(statistics.median(times) * 1e6, 1),
        "wrong": wrong,
    }


def main() -> None:
    sample = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    # The route names have moved from `workers` to `routes` since (issue 12).
    old = module_at(
        BEFORE_ISSUE_14,
        "services/selector/rank.py",
        moved={"services.common.workers": "services.common.routes"},
    )
    rank.guess_language("warm up")  # the model loads on first use; not part of the timing
    results: dict[str, Any] = {
        "sentences": len(sample),
        "languages": len({item["lang"] for item in sample}),
        "before": _score(old.guess_language, sample),
        "after": _score(rank.guess_language, sample),
    }
    for when in ("before", "after"):
        r = results[when]
        print(f"{when:6s} {r['right']}/{r['of']} right, median {r['median_us']} us")
    write_results(RESULTS, results)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
