"""Prompts are data files in each stage's `prompts/` folder, read once."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_prompt(package: str, name: str) -> str:
    """`load_prompt("services.planner", "parse_task.txt")`."""
    return (resources.files(package) / "prompts" / name).read_text(encoding="utf-8")
