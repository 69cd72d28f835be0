"""Prompt tokens per planning request: Chorus's planning prompt against HuggingGPT's original.

    python -m bench.planner_prompt_tokens   # data: $CHORUS_SHARED_DATA or <repo>/../shared/data

Chorus: `services.planner.prompt.planning_prompt(request)`, every turn's content counted.
HuggingGPT (microsoft/JARVIS, `hugginggpt/server/awesome_chat.py`, `parse_task`): the system
turn `parse_task_tprompt`, the few-shot turns of `demos/demo_parse_task.json`, and the user turn
`parse_task_prompt` with `{{context}}` (the earlier turns: `[]` for a first request) and
`{{input}}` (the request, `"` turned into `'` and newlines dropped, as `replace_slot` does).
The two texts below are copied from `hugginggpt/server/configs/config.azure.yaml` at commit
2e6114e7bde150ac0b3e6c833c2a940289bf43e0; `config.default.yaml` was not in the searchable
index, and `config.minimax.yaml` holds the same two texts word for word, so the default's are
taken to be the same.

Both sides are counted by the same counter, `services.common.tokens.count_tokens` (an estimate
of a GPT-style BPE, no tokenizer download), over the turns' contents only (no role markers).
Requests: a seeded sample of TaskBench's multimedia `user_requests.json`. Chorus is measured
twice: with the media files the request names attached (as a Chorus client uploads them: the
prompt then lists them), and with none.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chorus.v1.messages_pb2 import ArtifactRef, ChatMessage, ChatRequest

from bench.stats import write_results
from bench.taskbench_rules import data_dir, resources_in
from services.common.tokens import count_tokens
from services.planner.prompt import planning_prompt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "planner_prompt_tokens.json"
REQUESTS = Path("taskbench") / "multimedia" / "user_requests.json"
DEMOS = Path("jarvis") / "demo_parse_task.json"
SAMPLE = 500
SEED = 2023

SOURCE = (
    "microsoft/JARVIS hugginggpt/server/configs/config.azure.yaml "
    "@ 2e6114e7bde150ac0b3e6c833c2a940289bf43e0 (tprompt.parse_task, prompt.parse_task)"
)
HUGGINGGPT_TPROMPT = (
    '#1 Task Planning Stage: The AI assistant can parse user input to several tasks: [{"task": '
    'task, "id": task_id, "dep": dependency_task_id, "args": {"text": text or '
    '<GENERATED>-dep_id, "image": image_url or <GENERATED>-dep_id, "audio": audio_url or '
    '<GENERATED>-dep_id}}]. The special tag "<GENERATED>-dep_id" refer to the one generated '
    "text/image/audio in the dependency task (Please consider whether the dependency task "
    'generates resources of this type.) and "dep_id" must be in "dep" list. The "dep" field '
    "denotes the ids of the previous prerequisite tasks which generate a new resource that the "
    'current task relies on. The "args" field must in ["text", "image", "audio"], nothing else. '
    'The task MUST be selected from the following options: "token-classification", '
    '"text2text-generation", "summarization", "translation", "question-answering", '
    '"conversational", "text-generation", "sentence-similarity", "tabular-classification", '
    '"object-detection", "image-classification", "image-to-image", "image-to-text", '
    '"text-to-image", "text-to-video", "visual-question-answering", '
    '"document-question-answering", "image-segmentation", "depth-estimation", '
    '"text-to-speech", "automatic-speech-recognition", "audio-to-audio", '
    '"audio-classification", "canny-control", "hed-control", "mlsd-control", '
    '"normal-control", "openpose-control", "canny-text-to-image", "depth-text-to-image", '
    '"hed-text-to-image", "mlsd-text-to-image", "normal-text-to-image", '
    '"openpose-text-to-image", "seg-text-to-image". There may be multiple tasks of the same '
    "type. Think step by step about all the tasks needed to resolve the user's request. Parse "
    "out as few tasks as possible while ensuring that the user request can be resolved. Pay "
    "attention to the dependencies and order among tasks. If the user input can't be parsed, "
    "you need to reply empty JSON []."
)
HUGGINGGPT_PROMPT = (
    "The chat log [ {{context}} ] may contain the resources I mentioned. Now I input "
    "{ {{input}} }. Pay attention to the input and output types of tasks and the dependencies "
    "between tasks."
)


def replace_slot(text: str, entries: dict[str, Any]) -> str:
    """HuggingGPT's `replace_slot`: `str(value)`, `"` as `'`, newlines dropped."""
    for key, value in entries.items():
        shown = value if isinstance(value, str) else str(value)
        text = text.replace("{{" + key + "}}", shown.replace('"', "'").replace("\n", ""))
    return text


def hugginggpt_prompt(request: str, demos: Sequence[dict[str, str]]) -> list[str]:
    """The contents of HuggingGPT's parse-task messages for a first request (no chat log)."""
    user = replace_slot(HUGGINGGPT_PROMPT, {"input": request, "context": []})
    return [HUGGINGGPT_TPROMPT, *(d["content"] for d in demos), user]


def chorus_request(text: str, attach: bool) -> ChatRequest:
    files: dict[str, ArtifactRef] = resources_in(text) if attach else {}
    message = ChatMessage(role="user", content=text, artifacts=list(files.values()))
    return ChatRequest(request_id="bench", messages=[message])


def chorus_prompt(text: str, attach: bool = True) -> list[str]:
    return [turn.content for turn in planning_prompt(chorus_request(text, attach))]


def tokens(contents: Sequence[str]) -> int:
    return sum(count_tokens(c) for c in contents)


def summary(counts: Sequence[int]) -> dict[str, float]:
    return {
        "median": float(statistics.median(counts)),
        "mean": round(statistics.fmean(counts), 1),
        "min": float(min(counts)),
        "max": float(max(counts)),
    }


def measure(requests: Sequence[str], demos: Sequence[dict[str, str]]) -> dict[str, Any]:
    sides = {
        "chorus_with_files": [tokens(chorus_prompt(r, attach=True)) for r in requests],
        "chorus_no_files": [tokens(chorus_prompt(r, attach=False)) for r in requests],
        "hugginggpt": [tokens(hugginggpt_prompt(r, demos)) for r in requests],
    }
    shown = {name: summary(counts) for name, counts in sides.items()}
    # The fixed part: everything but the last turn (no chat history in a first request).
    chorus_fixed = tokens(chorus_prompt("", attach=False)[:-1])
    hugginggpt_fixed = tokens(hugginggpt_prompt("", demos)[:-1])
    ratios = {
        f"{name}_over_hugginggpt": {
            "median": round(shown[name]["median"] / shown["hugginggpt"]["median"], 3),
            "mean": round(shown[name]["mean"] / shown["hugginggpt"]["mean"], 3),
        }
        for name in ("chorus_with_files", "chorus_no_files")
    }
    return {
        "requests": len(requests),
        "per_request_tokens": shown,
        "ratio": ratios,
        "fixed_tokens": {"chorus": chorus_fixed, "hugginggpt": hugginggpt_fixed},
        "request_tokens": summary([count_tokens(r) for r in requests]),
    }


def main() -> int:
    data = data_dir()
    if not (data / REQUESTS).is_file() or not (data / DEMOS).is_file():
        print(f"skipped: no TaskBench multimedia requests or HuggingGPT demos under {data}")
        return 0
    lines = (data / REQUESTS).read_text().splitlines()
    texts = [str(json.loads(line)["user_request"]) for line in lines if line.strip()]
    sample = random.Random(SEED).sample(texts, min(SAMPLE, len(texts)))
    demos = json.loads((data / DEMOS).read_text())
    results = {
        "data": str(data / REQUESTS),
        "seed": SEED,
        "counter": "services.common.tokens.count_tokens, summed over every turn's content",
        "hugginggpt_prompt_source": SOURCE,
        **measure(sample, demos),
    }
    write_results(RESULTS, results)
    per = results["per_request_tokens"]
    print(f"prompt tokens per planning request, {results['requests']} TaskBench requests:")
    for name, row in per.items():
        print(f"  {name:18} median {row['median']:7.1f}  mean {row['mean']:7.1f}")
    for name, ratio in results["ratio"].items():
        print(f"  {name}: median {ratio['median']}, mean {ratio['mean']}")
    fixed = results["fixed_tokens"]
    print(
        f"  fixed part (system + demos): chorus {fixed['chorus']}, hugginggpt {fixed['hugginggpt']}"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
