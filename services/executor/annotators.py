# torch modules answer `Any` when called, whatever their `forward` says.
# mypy: disable-error-code="no-any-return"
"""The ControlNet annotator networks: HED soft edges, M-LSD line segments and OpenPose body
keypoints, in torch.

Written here (not `controlnet_aux`, which needs torchvision) to the published checkpoints'
layouts, so that `lllyasviel/Annotators`' `ControlNetHED.pth`, `mlsd_large_512_fp32.pth` and
`body_pose_model.pth` load as they are. Each annotator is a callable from a PIL image to its
control map of the same size.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import nn

Array = NDArray[Any]


# --- HED -----------------------------------------------------------------------------------


class _HedBlock(nn.Module):
    """Convolutions with ReLU, then a 1x1 projection to one edge logit per pixel."""

    def __init__(self, channels_in: int, channels: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(
                nn.Conv2d(channels_in if i == 0 else channels, channels, 3, padding=1)
                for i in range(layers)
            )
        )
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x, self.projection(x)


class HedNetwork(nn.Module):
    """ControlNet's HED (Apache-2.0 variant): five VGG stages, an edge logit map from each."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # the RGB mean, learned
        self.block1 = _HedBlock(3, 64, 2)
        self.block2 = _HedBlock(64, 128, 2)
        self.block3 = _HedBlock(128, 256, 3)
        self.block4 = _HedBlock(256, 512, 3)
        self.block5 = _HedBlock(512, 512, 3)

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        x, edges = rgb - self.norm, []
        for i, block in enumerate(
            [self.block1, self.block2, self.block3, self.block4, self.block5]
        ):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x, logits = block(x)
            edges.append(logits)
        return edges


# --- M-LSD (large): a MobileNetV2 trunk and a decoder to a line-segment map ----------------


class _ConvBnRelu6(nn.Sequential):
    """MobileNetV2's convolution; a stride-2 one pads right and bottom only, as TensorFlow does."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        padding = 0 if stride == 2 else (kernel - 1) // 2
        conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
        super().__init__(conv, nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = nn.functional.pad(x, (0, 1, 0, 1))
        for layer in self:
            x = layer(x)
        return x


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = [_ConvBnRelu6(c_in, hidden, kernel=1)] if expand != 1 else []
        layers += [
            _ConvBnRelu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class _Trunk(nn.Module):
    """MobileNetV2 to its fifth stage, on RGB plus a constant fourth channel; five feature maps."""

    TAPS = (1, 3, 6, 10, 13)

    def __init__(self) -> None:
        super().__init__()
        features: list[nn.Module] = [_ConvBnRelu6(4, 32, stride=2)]
        channels = 32
        for expand, c_out, repeats, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                               (6, 64, 4, 2), (6, 96, 3, 1)]:  # fmt: skip
            for i in range(repeats):
                features.append(_InvertedResidual(channels, c_out, stride if i == 0 else 1, expand))
                channels = c_out
        self.features = nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                taps.append(x)
        return taps


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Merge(nn.Module):
    """A finer feature map joined with the (upsampled) coarser decoder state."""

    def __init__(self, fine: int, coarse: int, upscale: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(coarse, 64, 1)
        self.conv2 = _conv_bn_relu(fine, 64, 1)
        self.upscale = upscale

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        coarse = self.conv1(coarse)
        if self.upscale:
            coarse = nn.functional.interpolate(
                coarse, scale_factor=2.0, mode="bilinear", align_corners=True
            )
        return torch.cat((self.conv2(fine), coarse), dim=1)


class _Refine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(128, 128, 3)
        self.conv2 = _conv_bn_relu(128, 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(64, 64, 3, dilation=5)
        self.conv2 = _conv_bn_relu(64, 64, 3)
        self.conv3 = nn.Conv2d(64, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MlsdNetwork(nn.Module):
    """M-LSD large: at half the input's resolution, a line-centre logit (channel 0) and each
    centre's displacement to the segment's two ends (channels 1-4: x0, y0, x1, y1)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Trunk()
        self.block15, self.block16 = _Merge(64, 96, upscale=False), _Refine()
        self.block17, self.block18 = _Merge(32, 64), _Refine()
        self.block19, self.block20 = _Merge(24, 64), _Refine()
        self.block21, self.block22 = _Merge(16, 64), _Refine()
        self.block23 = _Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:]


def find_segments(
    maps: torch.Tensor, min_score: float = 0.1, min_length: float = 20.0, top: int = 200
) -> Array:
    """Segments (x0, y0, x1, y1) in map pixels from M-LSD's output (1, 5+, H, W): the `top`
    local maxima of the centre map, kept where confident and long enough."""
    heat = torch.sigmoid(maps[0, 0].float())
    peaks = heat * (nn.functional.max_pool2d(heat[None], 3, stride=1, padding=1)[0] == heat)
    scores, indices = torch.topk(peaks.reshape(-1), min(top, peaks.numel()))
    width = heat.shape[1]
    ys, xs = (indices // width).cpu().numpy(), (indices % width).cpu().numpy()
    ends = maps[0, 1:5].float().cpu().numpy()[:, ys, xs].T  # (top, 4) displacements
    segments = ends + np.stack([xs, ys, xs, ys], axis=1)
    lengths = np.hypot(ends[:, 0] - ends[:, 2], ends[:, 1] - ends[:, 3])
    keep = (scores.cpu().numpy() > min_score) & (lengths > min_length)
    return np.asarray(segments[keep])


class MlsdAnnotator:
    """Image -> white line segments on black, detected at the network's 512x512 input."""

    def __init__(self, network: MlsdNetwork, resolution: int = 512) -> None:
        self.network = network.eval()
        self.resolution = resolution

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"))
        side = self.resolution
        small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        with_ones = np.concatenate([small, np.ones((side, side, 1), np.float32)], axis=2)
        tensor = torch.from_numpy(with_ones.transpose(2, 0, 1) / 127.5 - 1.0)[None]
        parameter = next(self.network.parameters())
        with torch.no_grad():
            maps = self.network(tensor.to(parameter.device, parameter.dtype))
        height, width = rgb.shape[:2]
        # the maps are at half the input; the input is the image squeezed to side x side
        scale = np.array([width, height, width, height]) * 2 / side
        canvas: Array = np.zeros((height, width), np.uint8)
        for x0, y0, x1, y1 in find_segments(maps) * scale:
            cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
        return Image.fromarray(canvas).convert("RGB")


# --- OpenPose body (COCO, 18 keypoints) ------------------------------------------------------

# Limbs as (part, part) over the 18 COCO keypoints (0 nose, 1 neck, 2-4 right arm, 5-7 left arm,
# 8-10 right leg, 11-13 left leg, 14-17 eyes and ears), and the two PAF channels (x, y) of each.
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
         (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17)]  # fmt: skip
PAF_CHANNELS = [(12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3),
                (4, 5), (6, 7), (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33),
                (36, 37), (18, 19), (26, 27)]  # fmt: skip
PARTS = 18
# The colours ControlNet-openpose was trained on, one per keypoint and per drawn limb.
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
           (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
           (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]  # fmt: skip
_STRIDE = 8
_BOX = 368  # the height the network was trained at; ControlNet's annotator runs it at half


def _stack(layers: list[tuple[str, int, int, int]], last_relu: bool) -> nn.Sequential:
    """Named convolutions (name, in, out, kernel) with ReLU after each, pools named `pool*`."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (name, c_in, c_out, k) in enumerate(layers):
        if name.startswith("pool"):
            modules[name] = nn.MaxPool2d(2, 2)
            continue
        modules[name] = nn.Conv2d(c_in, c_out, k, padding=k // 2)
        if i < len(layers) - 1 or last_relu:
            modules[f"relu_{name}"] = nn.ReLU(inplace=True)
    return nn.Sequential(modules)


def _stage(stage: int, branch: int, outputs: int) -> nn.Sequential:
    if stage == 1:
        names = [f"conv5_{i}_CPM_L{branch}" for i in range(1, 6)]
        shapes = [(128, 128, 3), (128, 128, 3), (128, 128, 3), (128, 512, 1), (512, outputs, 1)]
    else:
        names = [f"Mconv{i}_stage{stage}_L{branch}" for i in range(1, 8)]
        shapes = [(185, 128, 7), *[(128, 128, 7)] * 4, (128, 128, 1), (128, outputs, 1)]
    # The published model has a ReLU after its very last layer (stage 6, heatmaps).
    last_relu = stage == 6 and branch == 2
    return _stack([(n, *s) for n, s in zip(names, shapes, strict=True)], last_relu)


class PoseNetwork(nn.Module):
    """OpenPose's body network: VGG features, then six stages refining part affinity fields
    (branch 1, 38 channels) and keypoint heatmaps (branch 2, 18 parts and background)."""

    def __init__(self) -> None:
        super().__init__()
        vgg = [("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), ("pool1_stage1", 0, 0, 0),
               ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), ("pool2_stage1", 0, 0, 0),
               ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3),
               ("conv3_4", 256, 256, 3), ("pool3_stage1", 0, 0, 0), ("conv4_1", 256, 512, 3),
               ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3)]  # fmt: skip
        self.model0 = _stack(vgg, last_relu=True)
        for stage in range(1, 7):
            setattr(self, f"model{stage}_1", _stage(stage, 1, 38))
            setattr(self, f"model{stage}_2", _stage(stage, 2, 19))

    def forward(self, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model0(bgr)
        x = features
        for stage in range(1, 7):
            pafs = getattr(self, f"model{stage}_1")(x)
            heatmaps = getattr(self, f"model{stage}_2")(x)
            x = torch.cat([pafs, heatmaps, features], 1)
        return pafs, heatmaps

    def load_published(self, state: dict[str, torch.Tensor]) -> PoseNetwork:
        """Loads the Caffe-converted checkpoint, whose keys name layers without their stage."""
        own = {key: state[key.split(".", 1)[1]] for key in self.state_dict()}
        self.load_state_dict(own)
        return self


@dataclass(frozen=True)
class Keypoint:
    x: float
    y: float
    score: float


def find_keypoints(heatmaps: Array, threshold: float = 0.1) -> list[list[Keypoint]]:
    """Each part's candidates: local maxima of its smoothed heatmap (H, W, parts) over `threshold`."""
    found = []
    for part in range(PARTS):
        smooth = cv2.GaussianBlur(heatmaps[:, :, part].astype(np.float32), (0, 0), 3)
        peak = (smooth == cv2.dilate(smooth, np.ones((3, 3), np.uint8))) & (smooth > threshold)
        ys, xs = np.nonzero(peak)
        found.append(
            [
                Keypoint(float(x), float(y), float(heatmaps[y, x, part]))
                for x, y in zip(xs, ys, strict=True)
            ]
        )
    return found


def _affinity(a: Keypoint, b: Keypoint, field: Array, height: int) -> float | None:
    """How well the limb field (H, W, 2) runs from a to b; None when it does not."""
    vector = np.array([b.x - a.x, b.y - a.y])
    length = float(np.linalg.norm(vector))
    if length == 0:
        return None
    xs = np.linspace(a.x, b.x, 10).round().astype(int)
    ys = np.linspace(a.y, b.y, 10).round().astype(int)
    along = field[ys, xs] @ (vector / length)
    score = float(along.mean()) + min(0.5 * height / length - 1, 0.0)  # long limbs pay
    return score if (along > 0.05).mean() > 0.8 and score > 0 else None


def find_people(keypoints: list[list[Keypoint]], pafs: Array) -> list[dict[int, Keypoint]]:
    """People as {part: keypoint}: limbs matched greedily by field score, grouped by shared joints."""
    people: list[dict[int, Keypoint]] = []
    for (part_a, part_b), (cx, cy) in zip(LIMBS, PAF_CHANNELS, strict=True):
        field = pafs[:, :, [cx, cy]]
        pairs = []
        for a in keypoints[part_a]:
            for b in keypoints[part_b]:
                score = _affinity(a, b, field, pafs.shape[0])
                if score is not None:
                    pairs.append((score, a, b))
        used: set[int] = set()
        for _, a, b in sorted(pairs, key=lambda p: -p[0]):
            if id(a) in used or id(b) in used:
                continue
            used |= {id(a), id(b)}
            person = next((p for p in people if p.get(part_a) is a or p.get(part_b) is b), None)
            if person is None:
                people.append({part_a: a, part_b: b})
            else:
                person.setdefault(part_a, a)
                person.setdefault(part_b, b)
    return [p for p in people if len(p) >= 4]  # fewer joints are more likely noise than a body


def draw_pose(size: tuple[int, int], people: list[dict[int, Keypoint]]) -> Image.Image:
    """Limbs as coloured ellipses and joints as dots on black, as ControlNet-openpose expects."""
    width, height = size
    canvas: Array = np.zeros((height, width, 3), np.uint8)
    radius = max(2, round(min(width, height) / 128))
    for person in people:
        for i, (part_a, part_b) in enumerate(LIMBS[:17]):  # the ear-shoulder links are not drawn
            if part_a in person and part_b in person:
                a, b = person[part_a], person[part_b]
                middle = (int((a.x + b.x) / 2), int((a.y + b.y) / 2))
                length = int(np.hypot(a.x - b.x, a.y - b.y) / 2)
                angle = int(np.degrees(np.arctan2(b.y - a.y, b.x - a.x)))
                polygon = np.asarray(cv2.ellipse2Poly(middle, (length, radius), angle, 0, 360, 1))
                limb = canvas.copy()
                cv2.fillConvexPoly(limb, polygon, COLOURS[i])
                canvas = cv2.addWeighted(canvas, 0.4, limb, 0.6, 0)
        for part, point in person.items():
            cv2.circle(canvas, (int(point.x), int(point.y)), radius, COLOURS[part], -1)
    return Image.fromarray(canvas, "RGB")


class PoseAnnotator:
    """Image -> OpenPose skeleton map, at the annotator's detection scale."""

    def __init__(self, network: PoseNetwork) -> None:
        self.network = network.eval()

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"))
        scale = 0.5 * _BOX / rgb.shape[0]
        small = cv2.resize(rgb[:, :, ::-1], None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        h, w = small.shape[:2]
        padded = cv2.copyMakeBorder(
            small, 0, -h % _STRIDE, 0, -w % _STRIDE, cv2.BORDER_CONSTANT, value=(128, 128, 128)
        )
        parameter = next(self.network.parameters())
        tensor = torch.from_numpy(padded.transpose(2, 0, 1).copy()).float()[None] / 256 - 0.5
        with torch.no_grad():
            pafs, heatmaps = self.network(tensor.to(parameter.device, parameter.dtype))
        size = (rgb.shape[1], rgb.shape[0])
        people = find_people(
            find_keypoints(_to_image(heatmaps, h, w, size)), _to_image(pafs, h, w, size)
        )
        return draw_pose(size, people)


def _to_image(maps: torch.Tensor, h: int, w: int, size: tuple[int, int]) -> Array:
    """Network output (1, C, H/8, W/8) -> (height, width, C) at the input image's size."""
    array = maps[0].float().cpu().numpy().transpose(1, 2, 0)
    full = cv2.resize(array, None, fx=_STRIDE, fy=_STRIDE, interpolation=cv2.INTER_CUBIC)
    return np.asarray(cv2.resize(full[:h, :w], size, interpolation=cv2.INTER_CUBIC)).reshape(
        size[1], size[0], -1
    )


class HedAnnotator:
    """Image -> HED soft edges: the mean of the five stages' logits, through a sigmoid,
    detected with the shorter side at `resolution` (ControlNet's 512) and mapped back."""

    def __init__(self, network: HedNetwork, resolution: int = 512) -> None:
        self.network = network.eval()
        self.resolution = resolution

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"))
        scale = self.resolution / min(rgb.shape[:2])
        detect = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        parameter = next(self.network.parameters())
        tensor = torch.from_numpy(detect.transpose(2, 0, 1).copy()).float()[None]
        with torch.no_grad():
            stages = self.network(tensor.to(parameter.device, parameter.dtype))
        size = (rgb.shape[1], rgb.shape[0])
        maps = [cv2.resize(s[0, 0].float().cpu().numpy(), size) for s in stages]
        edges = 1 / (1 + np.exp(-np.mean(maps, axis=0)))
        return Image.fromarray((edges * 255).clip(0, 255).astype(np.uint8)).convert("RGB")


Annotator = HedAnnotator | MlsdAnnotator | PoseAnnotator


def build(task: str, state: dict[str, torch.Tensor] | None) -> Annotator:
    """The task's annotator, with the published weights (`state`) or random ones (None)."""
    if task == "openpose-control":
        pose = PoseNetwork()
        return PoseAnnotator(pose.load_published(state) if state is not None else pose)
    network = MlsdNetwork() if task == "mlsd-control" else HedNetwork()
    if state is not None:
        network.load_state_dict(state)
    return MlsdAnnotator(network) if isinstance(network, MlsdNetwork) else HedAnnotator(network)
