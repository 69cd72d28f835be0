"""Code as it was at an earlier commit, loaded from git, to measure before and after in one run."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Mapping

# main before issue 14: NumPy annotators, language guessed from scripts and common words.
BEFORE_ISSUE_14 = "e01f0a8"


def module_at(commit: str, path: str, moved: Mapping[str, str] | None = None) -> types.ModuleType:
    """The module at `path` as it was at `commit`. Its imports are today's, so `moved` names
    the modules (old -> new) that what it imports has moved to since."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True
    ).stdout
    for old, new in (moved or {}).items():
        source = source.replace(f"from {old} import ", f"from {new} import ")
    module = types.ModuleType(f"{path.replace('/', '.').removesuffix('.py')}@{commit}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{path}@{commit}", "exec"), module.__dict__)
    return module
