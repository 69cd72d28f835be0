"""The planner latency benchmark times the tree it is pointed at, reply by reply."""

from __future__ import annotations

import json
from pathlib import Path

from chorus.v1.messages_pb2 import Kind

from bench.planner_latency import ROOT, _median, _per_round, _time_tree

PLAN = [{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "photo.jpg"}}]


def test_a_tree_is_timed_in_its_own_process(tmp_path: Path) -> None:
    files = [["photo.jpg", Kind.KIND_IMAGE]]
    corpus = [
        {"request": "caption photo.jpg", "reply": json.dumps(PLAN), "files": files},
        {"request": "caption photo.jpg", "reply": "<think>hmm", "files": files},
    ]
    corpus_file = tmp_path / "corpus.json"
    corpus_file.write_text(json.dumps(corpus))
    timed = _time_tree(ROOT, str(corpus_file))
    assert Path(timed["tree"]) == ROOT  # the tree under test, not whatever is installed
    assert len(timed["parse_plan"]) == len(timed["plan"]) == 2
    figures = _per_round([timed], ["clean", "corrupted"])
    assert _median(figures["plan, clean"])["median_us"] == round(timed["plan"][0] * 1e6, 1)
