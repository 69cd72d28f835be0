"""Where a local backend runs its work: a built-in operation on a small image on the event loop
(cheaper than a thread hand-off), everything else in a thread."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from PIL import Image

from services.executor.backends import LocalBackend
from services.executor.handler import Handler, Inputs, Local
from services.executor.handlers import HANDLERS
from services.executor.media import ON_LOOP_OPERATION_PIXELS
from services.executor.models import LoadedModel, LoadOptions, ModelSpec
from services.executor.pool import ModelPool


def _probe(model: str) -> tuple[LocalBackend, list[threading.Thread]]:
    """A canny-control backend whose call notes the thread it runs in."""
    ran_in: list[threading.Thread] = []
    canny = HANDLERS["canny-control"]
    assert canny.local is not None
    real_call = canny.local.call

    def call(loaded: Any, batch: Sequence[Inputs]) -> list[Any]:
        ran_in.append(threading.current_thread())
        return real_call(loaded, batch)

    handler = Handler(
        canny.task,
        canny.outputs,
        canny.post,
        Local(canny.local.loader, call),
        builtins=canny.builtins,
    )
    spec = ModelSpec(canny.task, model)

    def loader(spec: ModelSpec, options: LoadOptions) -> LoadedModel:
        return LoadedModel(spec, handler, canny.builtins["builtin:canny"], 0.0)

    return LocalBackend(handler, spec, ModelPool(LoadOptions(), loader=loader), 1), ran_in


@pytest.mark.parametrize(
    ("model", "side", "on_loop"),
    [
        ("builtin:canny", 8, True),
        ("builtin:canny", int(ON_LOOP_OPERATION_PIXELS**0.5) + 1, False),
        ("some/model", 8, False),  # a model's call is never small work
    ],
)
async def test_only_a_built_in_operation_on_a_small_image_runs_on_the_loop(
    model: str, side: int, on_loop: bool
) -> None:
    backend, ran_in = _probe(model)
    image = Image.new("RGB", (side, side))
    [outputs] = await backend.infer(model, [{"image": image}])
    assert outputs[0].image is not None and outputs[0].image.size == (side, side)
    assert (ran_in == [threading.current_thread()]) == on_loop
