"""The committed reports re-render byte for byte from their stored results (no experiment re-run): the report code's
shared helpers (``pipelines.report.md_table``, the defence report's section table) write what the runs wrote."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "reports"


@pytest.mark.parametrize("name", ["kurakin_mobilenet_v2", "kurakin_mobilenet_v2_mild", "transfer_imagenet",
                                  "kurakin_efficientnet_lite2_phone_laser", "kurakin_efficientnet_lite2_299_phone_laser"])
def test_experiment_report_rerenders_identically(name, tmp_path):
    import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
    from pipelines.experiment import write_report

    run = tmp_path / name
    shutil.copytree(DOCS / name, run)
    write_report(run)
    for f in ("report.md", "report.json"):
        assert (run / f).read_bytes() == (DOCS / name / f).read_bytes(), f
    # report.html is generated, not committed (docs/reports keeps .md/.json/plots): it carries the same table
    html = (run / "report.html").read_text()
    assert "<table" in html and json.loads((run / "report.json").read_text()) is not None


def test_defence_report_rerenders_identically(tmp_path):
    from pipelines.defences.report import write_report

    write_report(json.loads((DOCS / "defences_sign" / "report.json").read_text()), tmp_path)
    assert (tmp_path / "report.md").read_text() == (DOCS / "defences_sign" / "report.md").read_text()
