"""How a task reaches the replica that runs it: the routes that are not one model's files.

Pure names, shared by the selector's ranking and the executors (no bus here).
"""

from __future__ import annotations

# Routes that are not one model's files. A replica that serves `(task, LLM_ROUTE)` runs the
# task on the LLM itself (HuggingGPT does this for the text tasks in `tasks.LLM_TASKS`); one that
# serves `(task, REMOTE_ROUTE)` runs any Hub model remotely through `huggingface_hub`'s
# InferenceClient. Invocations travel on `subjects.invoke(task, route)`; for the remote route
# `TaskInvocation.model` names the Hub model to run.
LLM_ROUTE = "llm"
REMOTE_ROUTE = "hf-inference"
# Model ids of operations built into the executor (`builtin:canny`): no weights to load.
BUILTIN_PREFIX = "builtin:"
