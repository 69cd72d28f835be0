"""The HED, M-LSD and OpenPose annotator networks: checkpoints in the published layout, random
weights.

A random network finds no body and no line, so the decoding is tested on its own, on
heatmaps and part affinity fields drawn for one arm, and on a drawn line-centre map.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from chorus.v1.messages_pb2 import TaskArgument, TaskInvocation, TaskStatus
from PIL import Image

from services.executor import annotators
from services.executor.execute import execute
from services.executor.media import encode_png
from tests.support import MemoryArtifacts, local_run


@pytest.fixture(scope="session")
def annotator_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`lllyasviel/Annotators`' three files, of random weights, keyed as the published ones are."""
    target = tmp_path_factory.mktemp("Annotators")
    torch.manual_seed(0)
    pose = annotators.PoseNetwork().state_dict()
    # The published OpenPose checkpoint names each layer without the stage holding it.
    torch.save({k.split(".", 1)[1]: v for k, v in pose.items()}, target / "body_pose_model.pth")
    torch.save(annotators.HedNetwork().state_dict(), target / "ControlNetHED.pth")
    torch.save(annotators.MlsdNetwork().state_dict(), target / "mlsd_large_512_fp32.pth")
    return target


@pytest.mark.parametrize("task", ["openpose-control", "hed-control", "mlsd-control"])
async def test_annotator_networks_map_an_image_to_its_size(
    task: str, annotator_weights: Path
) -> None:
    store = MemoryArtifacts()
    photo = Image.new("RGB", (64, 48), "white")
    arg = TaskArgument(name="image")
    arg.artifact.CopyFrom(await store.put(encode_png(photo), "photo.png"))
    inv = TaskInvocation(request_id="r", task=task, args=[arg], attempt=1)
    result = await execute(inv, local_run(task, str(annotator_weights)), store, "w")
    assert result.status == TaskStatus.TASK_STATUS_SUCCEEDED, result.error
    ref, data = store.items[result.outputs[0].artifact.id]
    picture = Image.open(io.BytesIO(data))
    assert ref.media_type == "image/png" and picture.size == (64, 48) and picture.mode == "RGB"


def _arm() -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int]]]:
    """Heatmaps (H, W, 19) and fields (H, W, 38) of one right arm, with the head on the neck."""
    height, width = 120, 160
    joints = {1: (80, 30), 2: (50, 35), 3: (40, 70), 4: (35, 105), 0: (80, 10)}
    heatmaps = np.zeros((height, width, 19), np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    for part, (x, y) in joints.items():
        heatmaps[:, :, part] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 18.0)
    pafs = np.zeros((height, width, 38), np.float32)
    for (a, b), (cx, cy) in zip(annotators.LIMBS, annotators.PAF_CHANNELS, strict=True):
        if a in joints and b in joints:
            direction = np.subtract(joints[b], joints[a]) / np.linalg.norm(
                np.subtract(joints[b], joints[a])
            )
            pafs[:, :, cx], pafs[:, :, cy] = direction  # the whole field points along the limb
    return heatmaps, pafs, joints


def test_keypoints_and_limbs_make_one_person() -> None:
    heatmaps, pafs, joints = _arm()
    keypoints = annotators.find_keypoints(heatmaps)
    assert [len(k) for k in keypoints[:5]] == [1, 1, 1, 1, 1] and not any(keypoints[5:])
    (person,) = annotators.find_people(keypoints, pafs)
    assert {p: (round(k.x), round(k.y)) for p, k in person.items()} == joints


def test_a_drawn_pose_has_the_limb_colours_on_black() -> None:
    heatmaps, pafs, joints = _arm()
    people = annotators.find_people(annotators.find_keypoints(heatmaps), pafs)
    canvas = np.asarray(annotators.draw_pose((160, 120), people))
    assert tuple(canvas[5, 150]) == (0, 0, 0)
    assert tuple(canvas[joints[2][1], joints[2][0]]) == annotators.COLOURS[2]  # right shoulder dot
    middle_of_forearm = canvas[87, 37]  # limb 3 (elbow-wrist) drawn in its colour, blended
    assert middle_of_forearm.any() and tuple(middle_of_forearm) != (255, 255, 255)


def test_a_line_centre_with_its_ends_is_one_segment() -> None:
    maps = torch.full((1, 5, 64, 64), -10.0)  # confident nowhere
    maps[0, 0, 20, 30] = 10.0  # one centre, at x=30, y=20
    maps[0, 1:5, 20, 30] = torch.tensor([-15.0, 0.0, 15.0, 0.0])  # ends 15 to the left and right
    maps[0, 0, 40, 10] = 10.0  # a confident centre of a segment too short to keep
    maps[0, 1:5, 40, 10] = torch.tensor([-2.0, 0.0, 2.0, 0.0])
    (segment,) = annotators.find_segments(maps)
    assert segment.tolist() == [15.0, 20.0, 45.0, 20.0]
