"""Executor settings: which models this replica serves, on which device, how much at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import SettingsError, int_setting
from services.executor.models import ModelSpec, default_specs, discover_cached


@dataclass(frozen=True)
class ExecutorConfig:
    specs: tuple[ModelSpec, ...]
    device: str
    capacity: int
    allow_download: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExecutorConfig:
        """`CHORUS_EXECUTOR_MODELS` is `TASK=MODEL` pairs separated by `;`.

        Unset, the replica serves the built-in and bundled models and what the local
        Hugging Face cache holds.
        """
        raw = env.get("CHORUS_EXECUTOR_MODELS", "").strip()
        try:
            specs = [ModelSpec.parse(s) for s in raw.split(";") if s.strip()]
        except ValueError as e:
            raise SettingsError(f"CHORUS_EXECUTOR_MODELS: {e}") from e
        if not specs or env.get("CHORUS_EXECUTOR_DEFAULTS", "1") != "0":
            specs = _merged(specs, default_specs() + discover_cached())
        device = env.get("CHORUS_DEVICE", "cpu")
        if device != "cpu" and not device.startswith("cuda"):
            raise SettingsError(f"CHORUS_DEVICE must be cpu or cuda[:N], not {device!r}")
        capacity = int_setting(env, "CHORUS_EXECUTOR_CAPACITY", 2)
        offline = env.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        allow = env.get("CHORUS_ALLOW_DOWNLOAD", "1") != "0" and not offline
        return cls(tuple(specs), device, max(capacity, 1), allow)


def _merged(explicit: list[ModelSpec], extra: list[ModelSpec]) -> list[ModelSpec]:
    """Explicit specs first; an extra one only for a task no explicit spec covers."""
    covered = {s.task for s in explicit}
    return explicit + [s for s in extra if s.task not in covered and s not in explicit]
