"""`chorus catalog import|sync|list`: the model catalog the selector ranks with."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from services.common.tasks import TASK_TYPES
from services.selector.catalog import (
    Catalog,
    CatalogEntry,
    CatalogError,
    import_hugginggpt,
    load_catalog,
    read_jsonl,
    sync_from_hub,
    user_catalog_path,
)


def import_file(path: Path) -> int:
    """Adds HuggingGPT's `p0_models.jsonl` (or a catalog in our own format) to the user catalog."""
    if not path.is_file():
        print(f"chorus catalog import: no such file: {path}", file=sys.stderr)
        return 2
    entries, skipped = import_hugginggpt(path)
    for reason in skipped[:10]:
        print(f"skipped {reason}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more lines skipped", file=sys.stderr)
    _save(entries, f"imported {len(entries)} models from {path}")
    return 0 if entries else 1


def sync(tasks: list[str], limit: int) -> int:
    """Refreshes the user catalog from the Hub (`HF_ENDPOINT` and `HF_TOKEN` apply)."""
    from huggingface_hub import HfApi

    unknown = [t for t in tasks if t not in TASK_TYPES]
    if unknown:
        print(f"chorus catalog sync: unknown task type(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        entries = sync_from_hub(HfApi(), tasks or list(TASK_TYPES), limit)
    except Exception as e:  # network, auth or Hub errors: one clear line
        print(f"chorus catalog sync: the Hub did not answer: {e}", file=sys.stderr)
        return 1
    _save(entries, f"synced {len(entries)} models from the Hub")
    return 0


def list_models(task: str | None) -> int:
    try:
        catalog = load_catalog()
    except CatalogError as e:
        print(f"chorus catalog list: {e}", file=sys.stderr)
        return 1
    tasks = [task] if task else sorted({e.task for e in catalog.entries.values()})
    for name in tasks:
        for entry in catalog.for_task(name):
            print(
                f"{entry.task:32} {entry.id:60} {entry.downloads:>12,} downloads  {entry.likes:>6,} likes"
            )
    return 0


def _save(entries: list[CatalogEntry], message: str) -> None:
    path = user_catalog_path(os.environ)
    catalog = Catalog()
    if path.is_file():
        catalog.add(read_jsonl(path))
    catalog.add(entries)
    catalog.write(path)
    print(f"{message}; {len(catalog.entries)} in {path}")
