"""The model catalog: facts about models per task type, for ranking and for the LLM's choice.

Three sources, one format (JSON lines of `CatalogEntry`): the default catalog shipped with the
package, HuggingGPT's `p0_models.jsonl` (`chorus catalog import`), and the Hub
(`chorus catalog sync`, through `huggingface_hub`). A user's catalog file adds to and
overrides the default by model id.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.tasks import TASK_TYPES

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DEFAULT_USER_CATALOG = Path("~/.cache/chorus/catalog.jsonl")


class CatalogError(ValueError):
    """A catalog file or entry cannot be read; the message says which and why."""


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    task: str
    downloads: int = 0
    likes: int = 0
    tags: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    library: str = ""
    license: str = ""
    size_bytes: int = 0  # 0: unknown
    description: str = ""

    @cached_property
    def tag_words(self) -> frozenset[str]:
        """The words of its tags ("emotion-detection" -> emotion, detection), for matching."""
        return frozenset(
            w for tag in self.tags for w in re.split(r"[-_ ]", tag.lower()) if len(w) > 3
        )

    @cached_property
    def language_set(self) -> frozenset[str]:
        """Its languages, lower-cased, for matching a request's."""
        return frozenset(lang.lower() for lang in self.languages)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CatalogEntry:
        return cls(
            id=str(data["id"]),
            task=str(data["task"]),
            downloads=_count(data.get("downloads")),
            likes=_count(data.get("likes")),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            languages=tuple(str(t) for t in data.get("languages") or ()),
            library=str(data.get("library") or ""),
            license=str(data.get("license") or ""),
            size_bytes=_count(data.get("size_bytes")),
            description=str(data.get("description") or ""),
        )


@dataclass
class Catalog:
    entries: dict[str, CatalogEntry] = field(default_factory=dict)  # by model id
    # The models of each task, most downloaded first: the selector asks on every dispatch.
    _by_task: dict[str, list[CatalogEntry]] | None = field(default=None, repr=False)

    def add(self, entries: Iterable[CatalogEntry]) -> None:
        for entry in entries:
            self.entries[entry.id] = entry
        self._by_task = None

    def for_task(self, task: str) -> Sequence[CatalogEntry]:
        """The task's models, most downloaded first."""
        if self._by_task is None:
            by_task: dict[str, list[CatalogEntry]] = {}
            for entry in sorted(
                self.entries.values(), key=lambda e: (-e.downloads, -e.likes, e.id)
            ):
                by_task.setdefault(entry.task, []).append(entry)
            self._by_task = by_task
        return self._by_task.get(task, ())

    def get(self, model: str) -> CatalogEntry | None:
        return self.entries.get(model)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [e.to_json() for e in sorted(self.entries.values(), key=lambda e: (e.task, e.id))]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_jsonl(path: Path) -> list[CatalogEntry]:
    return list(_entries(path.read_text(encoding="utf-8").splitlines(), str(path)))


def load_catalog(env: Mapping[str, str] | None = None) -> Catalog:
    """The shipped default, then the user's catalog (`CHORUS_CATALOG`) over it."""
    env = os.environ if env is None else env
    catalog = Catalog()
    shipped = resources.files("services.selector") / "data" / "default_catalog.jsonl"
    catalog.add(_entries(shipped.read_text(encoding="utf-8").splitlines(), "default catalog"))
    user = user_catalog_path(env)
    if user.is_file():
        catalog.add(read_jsonl(user))
    return catalog


def user_catalog_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("CHORUS_CATALOG") or DEFAULT_USER_CATALOG).expanduser()


def _entries(lines: Iterable[str], source: str) -> Iterator[CatalogEntry]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield CatalogEntry.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError) as e:
            raise CatalogError(f"{source}, line {number}: {e}") from e


def import_hugginggpt(path: Path) -> tuple[list[CatalogEntry], list[str]]:
    """Entries from HuggingGPT's `p0_models.jsonl`, and why any line was skipped.

    Its numbers may be strings and its `meta` a Python repr rather than JSON.
    """
    entries: list[CatalogEntry] = []
    skipped: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            meta = _meta(row.get("meta"))
            task = str(row.get("task") or row.get("pipeline_tag") or "")
            if task not in TASK_TYPES:
                skipped.append(f"line {number}: task {task!r} is not one Chorus runs")
                continue
            entries.append(
                CatalogEntry(
                    id=str(row["id"]),
                    task=task,
                    downloads=_count(row.get("downloads")),
                    likes=_count(row.get("likes")),
                    tags=tuple(str(t) for t in _as_list(meta.get("tags"))),
                    languages=tuple(str(t) for t in _as_list(meta.get("language"))),
                    library=str(meta.get("library_name") or ""),
                    license=str(_as_list(meta.get("license"))[0] if meta.get("license") else ""),
                    description=_summary(task, meta),
                )
            )
        except (ValueError, KeyError, TypeError, SyntaxError) as e:
            skipped.append(f"line {number}: {e}")
    return entries, skipped


def sync_from_hub(api: HfApi, tasks: Iterable[str], limit: int) -> list[CatalogEntry]:
    """The most downloaded models of each task on the Hub."""
    entries = []
    for task in tasks:
        for info in api.list_models(pipeline_tag=task, sort="downloads", limit=limit):
            tags = [str(t) for t in (getattr(info, "tags", None) or [])]
            entries.append(
                CatalogEntry(
                    id=str(info.id),
                    task=task,
                    downloads=_count(getattr(info, "downloads", 0)),
                    likes=_count(getattr(info, "likes", 0)),
                    tags=tuple(t for t in tags if ":" not in t),
                    languages=tuple(t.split(":", 1)[1] for t in tags if t.startswith("language:")),
                    library=str(getattr(info, "library_name", "") or ""),
                    license=next(
                        (t.split(":", 1)[1] for t in tags if t.startswith("license:")), ""
                    ),
                    description=f"{task} model from the Hub",
                )
            )
    return entries


def _meta(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        value = ast.literal_eval(raw)  # HuggingGPT wrote a Python repr here
        return value if isinstance(value, dict) else {}
    return {}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _count(value: Any) -> int:
    try:
        return max(0, int(str(value).replace(",", "").strip() or 0))
    except ValueError:
        return 0


def _summary(task: str, meta: Mapping[str, Any]) -> str:
    """A short description in our own words, from the facts the model card states."""
    languages = ", ".join(str(x) for x in _as_list(meta.get("language"))[:3])
    tags = ", ".join(str(x) for x in _as_list(meta.get("tags"))[:3])
    parts = [f"{task} model"]
    if languages:
        parts.append(f"for {languages}")
    if tags:
        parts.append(f"({tags})")
    return " ".join(parts)
