from __future__ import annotations

import json
from pathlib import Path

from chorus.v1.workers_pb2 import ServedModel, WorkerInfo

from services.selector.catalog import Catalog, CatalogEntry, import_hugginggpt, load_catalog
from services.selector.rank import RequestFacts, rank

# HuggingGPT's format as it really is: numbers as strings, `meta` a Python repr.
P0_LINES = [
    {
        "id": "org/small",
        "task": "text-classification",
        "downloads": "1,200",
        "likes": "3",
        "meta": "{'language': ['en', 'de'], 'tags': ['sentiment'], 'license': 'mit'}",
        "description": "long model card text",
    },
    {
        "id": "org/big",
        "task": "text-classification",
        "downloads": "98000",
        "likes": "40",
        "meta": "{'language': 'en'}",
        "description": "",
    },
    {"id": "org/robot", "task": "robot-control", "downloads": "5", "likes": "0", "meta": "{}"},
]


def test_hugginggpt_catalog_import(tmp_path: Path) -> None:
    path = tmp_path / "p0_models.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in P0_LINES) + "\n{not json\n")
    entries, skipped = import_hugginggpt(path)
    small, big = entries
    assert (small.downloads, small.likes, small.languages, small.license) == (
        1200,
        3,
        ("en", "de"),
        "mit",
    )
    assert small.tags == ("sentiment",) and "long model card" not in small.description
    assert big.downloads == 98000 and big.languages == ("en",)
    assert any("robot-control" in s for s in skipped) and any(
        s.startswith("line 4") for s in skipped
    )


def test_the_shipped_catalog_and_the_users_over_it(tmp_path: Path) -> None:
    user = tmp_path / "catalog.jsonl"
    Catalog(
        {"org/mine": CatalogEntry(id="org/mine", task="summarization", downloads=10**12)}
    ).write(user)
    catalog = load_catalog({"CHORUS_CATALOG": str(user)})
    assert catalog.get("builtin:canny") is not None  # shipped
    assert catalog.for_task("summarization")[0].id == "org/mine"  # added, ranked first
    assert len(catalog.for_task("image-to-text")) >= 3


def test_equal_load_ranks_by_downloads_then_likes() -> None:
    catalog = Catalog()
    catalog.add(
        [
            CatalogEntry(id="org/small", task="text-classification", downloads=10, likes=99),
            CatalogEntry(id="org/big", task="text-classification", downloads=1000),
        ]
    )
    worker = WorkerInfo(
        worker_id="w",
        capacity=2,
        models=[
            ServedModel(task="text-classification", model=m)
            for m in ("org/small", "org/big", "x/unknown")
        ],
    )
    ranked = rank("text-classification", RequestFacts.of("label this"), [worker], catalog)
    assert [c.model for c in ranked] == ["org/big", "org/small", "x/unknown"]
