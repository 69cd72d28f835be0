"""Where a task runs, behind one small protocol: local weights, the LLM, or remote inference.

`infer` takes a batch of decoded inputs for one model and returns each input's outputs.
Backends that cannot batch get batches of one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, Protocol

from services.common.llm import LLM, ChatTurn
from services.common.offload import run_small_on_loop
from services.executor.devices import free_memory, is_out_of_memory
from services.executor.handler import Handler, Inputs, Produced
from services.executor.media import small_images
from services.executor.models import ModelSpec
from services.executor.pool import ModelPool

Outputs = list[Produced]
# A Hub model id: `name` or `owner/name`; it becomes part of a URL, so nothing else passes.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class RemoteInferenceError(RuntimeError):
    """The remote inference service refused or failed the call."""


class ModelBackend(Protocol):
    kind: str  # announced as `ServedModel.backend`
    max_batch: int  # 1: no batching
    parallel: int  # batches that may run at once

    async def infer(self, model: str, batch: Sequence[Inputs]) -> list[Outputs]: ...


class LocalBackend:
    """A model in this process, loaded through the pool; one batch at a time per model."""

    kind = "local"
    parallel = 1  # a pipeline is not safe to call from two threads at once

    def __init__(self, handler: Handler, spec: ModelSpec, pool: ModelPool, max_batch: int) -> None:
        assert handler.local is not None
        self._handler = handler
        self._spec = spec
        self._pool = pool
        self.max_batch = max_batch if handler.local.batchable else 1
        self._builtin = spec.model in handler.builtins
        self.kind = "builtin" if self._builtin else handler.local.loader.value

    async def infer(self, model: str, batch: Sequence[Inputs]) -> list[Outputs]:
        # A built-in operation on a small image takes less CPU than the hand-off to a thread.
        small = self._builtin and small_images(batch)
        async with self._pool.use(self._spec) as loaded:
            try:
                return await run_small_on_loop(small, self._run, loaded.model, batch)
            except BaseException as e:
                if is_out_of_memory(e):
                    free_memory(self._pool.device)
                raise

    def _run(self, model: Any, batch: Sequence[Inputs]) -> list[Outputs]:
        assert self._handler.local is not None
        raws = self._handler.local.call(model, batch)
        return [self._handler.post(raw, inputs) for raw, inputs in zip(raws, batch, strict=True)]


class LLMBackend:
    """HuggingGPT's LLM-as-model: the text tasks in `tasks.LLM_TASKS` answered by the LLM."""

    kind = "llm"
    max_batch = 1

    def __init__(self, handler: Handler, llm: LLM, parallel: int) -> None:
        self._instruction = handler.llm_instruction
        self._llm = llm
        self.parallel = parallel

    async def infer(self, model: str, batch: Sequence[Inputs]) -> list[Outputs]:
        replies = []
        for inputs in batch:
            turns = [ChatTurn("system", self._instruction), ChatTurn("user", inputs["text"])]
            reply = await self._llm.complete(turns)
            replies.append([Produced("text", text=reply.strip())])
        return replies


class RemoteBackend:
    """Any Hub model through `huggingface_hub.InferenceClient` (HuggingGPT's hybrid mode).

    The model is named per invocation; the call goes to `<endpoint>/models/<model id>`, the
    route the Hugging Face router serves, or a self-hosted stand-in with the same routes.
    """

    kind = "remote"
    max_batch = 1

    def __init__(self, handler: Handler, client: Any, endpoint: str, parallel: int) -> None:
        assert handler.remote is not None
        self._handler = handler
        self._client = client
        self._endpoint = endpoint.rstrip("/")
        self.parallel = parallel

    async def infer(self, model: str, batch: Sequence[Inputs]) -> list[Outputs]:
        if not _HUB_ID.fullmatch(model) or ".." in model:
            raise RemoteInferenceError(f"{model!r} is not a Hugging Face model id")
        url = f"{self._endpoint}/models/{model}"
        return [await asyncio.to_thread(self._run, url, inputs) for inputs in batch]

    def _run(self, url: str, inputs: Inputs) -> Outputs:
        assert self._handler.remote is not None
        try:
            raw = self._handler.remote(self._client, url, inputs)
        except Exception as e:
            raise RemoteInferenceError(f"{type(e).__name__}: {e}") from e
        return self._handler.post(raw, inputs)


def inference_client(token: str | None, timeout_s: float) -> Any:
    from huggingface_hub import InferenceClient

    return InferenceClient(token=token or None, timeout=timeout_s)
