"""The handler registry, the built-in annotators and the post-processing pictures."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.common.tasks import LLM_TASKS, TASK_TYPES
from services.executor import imageops, render
from services.executor.handler import HandlerError, Output, build_registry
from services.executor.handlers import HANDLERS
from services.executor.models import LoadOptions, MissingExtra, ModelSpec, ModelUnavailable, load


def test_every_task_type_has_exactly_one_handler_with_its_output_kinds() -> None:
    assert set(HANDLERS) == set(TASK_TYPES)
    for name, handler in HANDLERS.items():
        kinds = {o.kind for o in handler.outputs}
        assert set(TASK_TYPES[name].outputs) <= kinds, name
        assert handler.local is not None or handler.needs, name
    assert {t for t, h in HANDLERS.items() if h.llm_instruction} == LLM_TASKS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: replace(h, task="teleportation"), "unknown task type"),
        (lambda h: replace(h, outputs=(Output("labels", -1),)), "produces no output of kind"),
        (lambda h: replace(h, local=None, needs=""), "no word on what it needs"),
        (lambda h: replace(h, local=replace(h.local, pipeline_task="")), "names no pipeline task"),
        (lambda h: replace(h, llm_instruction="Classify."), "LLM instruction"),
    ],
)
def test_a_bad_declaration_stops_the_registry_from_building(change: object, message: str) -> None:
    good = list(HANDLERS.values())
    broken = [change(h) if h.task == "text-classification" else h for h in good]  # type: ignore[operator]
    with pytest.raises(HandlerError, match=message):
        build_registry(broken)


def test_a_missing_or_doubled_handler_stops_the_registry() -> None:
    good = list(HANDLERS.values())
    with pytest.raises(HandlerError, match="no handler for task type"):
        build_registry([h for h in good if h.task != "depth-estimation"])
    with pytest.raises(HandlerError, match="two handlers"):
        build_registry([*good, HANDLERS["depth-estimation"]])


def test_tasks_that_need_a_model_say_so() -> None:
    with pytest.raises(ValueError, match=r"audio-to-audio cannot run locally.*remotely"):
        ModelSpec.parse("audio-to-audio=speechbrain/sepformer")
    with pytest.raises(ModelUnavailable, match="depth-control has no built-in; it needs a model"):
        load(ModelSpec("depth-control", "builtin:depth"), LoadOptions())
    with pytest.raises(ModelUnavailable, match="no such built-in for canny-control"):
        load(ModelSpec("canny-control", "builtin:hed"), LoadOptions())


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is not None, reason="diffusers installed")
@pytest.mark.parametrize("task", ["text-to-image", "image-to-image", "canny-text-to-image"])
def test_diffusion_tasks_name_the_extra_they_need(task: str, tmp_path: object) -> None:
    with pytest.raises(MissingExtra, match=r"pip install 'chorus\[diffusers\]'"):
        load(ModelSpec(task, str(tmp_path)), LoadOptions())


def _drawing() -> Image.Image:
    image = Image.new("RGB", (80, 60), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(5, 30), (75, 30)], fill="black", width=2)  # one long horizontal line
    draw.ellipse([20, 5, 40, 25], outline="black")
    return image


def test_builtin_annotators_make_maps_of_the_input_size() -> None:
    image = _drawing()
    for name, op in [(n, o) for h in HANDLERS.values() for n, o in h.builtins.items()]:
        out = op(image)
        assert out.size == image.size and out.mode == "RGB", name
    hed = np.asarray(imageops.soft_edges(image).convert("L"))
    assert hed[30, 50] > 100 and hed[55, 75] == 0  # bright on the line, black in the empty corner
    scribble = np.asarray(imageops.scribble(image).convert("L"))
    assert set(np.unique(scribble)) <= {0, 255} and scribble[30, 50] == 255


def test_mlsd_keeps_straight_lines_and_drops_curves() -> None:
    lines = np.asarray(imageops.straight_lines(_drawing()).convert("L")) > 0
    assert lines[28:33, 50].any()  # the horizontal line
    assert not lines[5:12, 28:32].any()  # the top of the circle is not a straight segment


def test_normal_map_of_a_flat_image_faces_the_viewer() -> None:
    flat = np.asarray(imageops.normal_map(Image.new("RGB", (20, 20), "gray")))
    assert np.all(np.abs(flat[..., 0].astype(int) - 127) <= 1) and np.all(flat[..., 2] == 255)
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 40), (20, 1)).astype(np.uint8))
    tilted = np.asarray(imageops.normal_map(ramp))
    assert tilted[10, 20, 0] < 120  # brightness rising to the right tilts the normal left


def test_boxes_are_drawn_in_a_colour_on_the_image() -> None:
    image = Image.new("RGB", (50, 50), "white")
    box = {"xmin": 10, "ymin": 10, "xmax": 40, "ymax": 40}
    out = np.asarray(render.draw_boxes(image, [{"label": "cat", "score": 0.9, "box": box}]))
    assert tuple(out[25, 10]) == render.colour_for(0) and tuple(out[25, 25]) == (255, 255, 255)


def test_masks_are_painted_and_depth_is_scaled() -> None:
    image = Image.new("RGB", (20, 20), "black")
    mask = Image.new("L", (20, 20), 0)
    mask.paste(255, (0, 0, 10, 20))
    out = np.asarray(render.overlay_masks(image, [{"label": "sky", "mask": mask}], alpha=1.0))
    assert tuple(out[5, 5]) == render.colour_for(0) and tuple(out[5, 15]) == (0, 0, 0)
    seg = np.asarray(render.segment_map((20, 20), [{"mask": mask}]))
    assert tuple(seg[5, 5]) == render.colour_for(0) and tuple(seg[5, 15]) == (0, 0, 0)
    depth = np.asarray(render.depth_image(np.array([[0.0, 2.0], [1.0, 2.0]]), (2, 2)).convert("L"))
    assert depth[0, 0] == 0 and depth[0, 1] == 255 and 120 < depth[1, 0] < 135


def test_handlers_read_the_slots_their_task_type_declares() -> None:
    assert [s.name for s in HANDLERS["question-answering"].inputs] == ["text", "context"]
    assert [(s.name, s.required) for s in HANDLERS["image-to-image"].inputs] == [
        ("image", True),
        ("text", False),
    ]
