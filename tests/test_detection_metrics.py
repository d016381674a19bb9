"""Detection metrics (pipelines/detection_metrics.py) on hand-computed boxes."""
from __future__ import annotations

import math

import pytest
import torch

from pipelines.detection_metrics import (
    ImageDetections,
    average_precision,
    match,
    recall,
    summarise,
)
from testbed.errors import ConfigError
from testbed.stats import wilson


def _im(gt, boxes, scores) -> ImageDetections:
    return ImageDetections(torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
                           torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                           torch.tensor(scores, dtype=torch.float32))


def _two_images() -> list[ImageDetections]:
    # image 1: one face; a perfect detection (0.9) and one on the background (0.8)
    # image 2: two faces; one found at IoU exactly 0.5 (0.7: [0,0,10,5] vs [0,0,10,10] = 50 / 100), one exactly (0.6)
    return [_im([[0, 0, 10, 10]], [[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8]),
            _im([[0, 0, 10, 10], [50, 50, 60, 60]], [[0, 0, 10, 5], [50, 50, 60, 60]], [0.7, 0.6])]


def test_average_precision_all_point_by_hand():
    # sorted: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 TP over 3 ground-truth boxes
    # (precision, recall): (1, 1/3), (1/2, 1/3), (2/3, 2/3), (3/4, 1); envelope 1, 3/4, 3/4
    # AP = 1/3 * 1 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6
    assert average_precision(_two_images()) == pytest.approx(5 / 6, abs=1e-12)
    # at IoU 0.6 the 0.7 detection no longer counts: TP, FP, FP, TP -> (1, 1/3), ..., (1/2, 2/3); AP = 1/3 + 1/3*1/2
    assert average_precision(_two_images(), iou_threshold=0.6) == pytest.approx(1 / 3 + 1 / 6, abs=1e-12)


def test_recall_counts_ground_truth_boxes_with_wilson():
    images = _two_images()
    assert recall(images) == wilson(3, 3)
    assert recall(images, score_threshold=0.65) == wilson(2, 3)  # the 0.6 detection is below the threshold
    assert recall(images, score_threshold=0.95) == wilson(0, 3)
    assert recall(images, iou_threshold=0.51) == wilson(2, 3)  # IoU 0.5 box misses
    s = summarise(images, score_threshold=0.65)
    assert (s.recall.k, s.recall.n, s.images, s.detections) == (2, 3, 2, 4)
    assert s.average_precision == pytest.approx(5 / 6)
    assert s.as_dict()["recall"]["low"] == pytest.approx(wilson(2, 3).low)


def test_duplicate_detection_is_a_false_positive_and_empty_cases():
    im = _im([[0, 0, 10, 10]], [[0, 0, 10, 10], [1, 0, 10, 10]], [0.5, 0.9])
    order, tp = match(im)
    assert order.tolist() == [1, 0] and tp.tolist() == [True, False]  # the higher score takes the face
    assert average_precision([im]) == pytest.approx(1.0)  # precision 1 at recall 1 comes first
    none = _im([[0, 0, 10, 10]], [], [])
    assert recall([none]) == wilson(0, 1) and average_precision([none]) == 0.0
    assert math.isnan(average_precision([_im([], [[0, 0, 1, 1]], [0.5])]))


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="scores"):
        _im([[0, 0, 1, 1]], [[0, 0, 1, 1]], [0.5, 0.2])
    with pytest.raises(ConfigError, match="gt must be"):
        ImageDetections(torch.zeros(4), torch.zeros(0, 4), torch.zeros(0))
    with pytest.raises(ConfigError, match="iou_threshold"):
        recall(_two_images(), iou_threshold=1.5)
