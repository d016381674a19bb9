"""A model of the wrong task for a command is refused before anything is loaded: exit 2 and one line naming the
models the command takes (a detector given to ``classify`` used to be an internal error); ``live`` takes
classifiers and detectors. Quick: only registry entries are read, no weights."""
from __future__ import annotations

import pytest

from pipelines.main import main


@pytest.mark.parametrize("argv,told", [
    (["classify", "astronaut", "--model", "tiny-face-detector"],
     "--model tiny-face-detector is a detector model; this command takes a classification model"),
    (["attack", "digital", "--attack", "fgsm", "--image", "astronaut", "--out", "OUT", "--model", "centernet-coco"],
     "--model centernet-coco is a detector model"),
    (["live", "SRC", "--model", "face-descriptor-dlib", "--out", "OUT"],
     "is a face-descriptor model; this command takes a classification or detector model"),
    (["evade-persons", "--model", "mobilenet_v2", "--train", "astronaut", "--held-out", "camera", "--out", "OUT"],
     ("is a classification model; this command takes a detector model "
      "(centernet-coco, mtcnn, mtcnn-facenet, tiny-face-detector")),
])
def test_a_model_of_the_wrong_task_is_refused_in_one_line(argv, told, tmp_path, capsys):
    argv = [str(tmp_path / "x") if a in ("OUT", "SRC") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert told in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_live_takes_a_detector(tmp_path, capsys):
    """A detector passes the task check; the missing source is what is reported."""
    assert main(["live", str(tmp_path / "missing.mp4"), "--model", "mtcnn", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing.mp4" in err and "model" not in err.split("error:", 1)[1][:40]
