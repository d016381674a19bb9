from __future__ import annotations

import json

import pytest

from pipelines.scoring import Finding, score
from testbed.errors import ConfigError


def test_physical_sticker_is_av_physical():
    s = score(Finding("stop sign sticker -> speed limit", "physical", 0.93, 1000))
    assert s.cvss31_vector == "CVSS:3.1/AV:P/AC:L/PR:N/UI:N/S:U/C:N/I:H/A:N"
    assert s.cvss31_score == 4.6 and s.cvss31_severity == "Medium"
    assert s.cvss40_vector.startswith("CVSS:4.0/AV:P/AC:L")
    assert "AML.T0041" in s.atlas and "AML.T0015" in s.atlas


def test_surfaces_map_to_attack_vectors_and_privileges():
    host = score(Finding("frame tamperer on host", "host", 1.0, 500))
    net = score(Finding("frame tamperer on camera LAN", "adjacent-network", 1.0, 500, drops_frames=True))
    assert "/AV:L/" in host.cvss31_vector and "/PR:L/" in host.cvss31_vector
    assert "/AV:A/" in net.cvss31_vector and "/PR:N/" in net.cvss31_vector and net.cvss31_vector.endswith("A:L")
    assert net.cvss31_score > host.cvss31_score  # adjacent, no privileges, plus availability
    assert "AML.T0029" in net.atlas


def test_unreliable_attack_scores_lower():
    hi = score(Finding("patch", "physical", 0.9, 100))
    lo = score(Finding("patch", "physical", 0.2, 100))
    assert "AC:H" in lo.cvss31_vector and "I:L" in lo.cvss31_vector and lo.cvss31_score < hi.cvss31_score


def test_bad_findings_are_refused():
    with pytest.raises(ConfigError, match="surface"):
        Finding("x", "satellite", 0.5, 10)
    with pytest.raises(ConfigError, match="success_rate"):
        Finding("x", "physical", 1.5, 10)
    with pytest.raises(ConfigError, match="ATLAS"):
        Finding("x", "physical", 0.5, 10, atlas=("AML.T9999",))


# ------------------------------------------------------------------------------------------------ testbed score
def _photo_folder(tmp_path):
    """coffee (MobileNetV2: 'espresso') twice, chelsea (a cat) once, a corrupt JPEG and a grayscale PNG."""
    from PIL import Image

    from testbed.photos import load_photo
    from testbed.runs import save_image

    d = tmp_path / "photos"
    d.mkdir()
    save_image(load_photo("coffee"), d / "a_coffee.png")
    save_image(load_photo("coffee")[..., 20:, 30:], d / "b_coffee_crop.png")
    save_image(load_photo("chelsea"), d / "c_chelsea.png")
    (d / "d_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    Image.new("L", (64, 64), 128).save(d / "e_gray.png")
    return d


def test_score_photos_targeted_untargeted_interval_and_bad_photos(tmp_path):
    from pipelines.scoring import score_photos, write_photo_scores
    from testbed.models.registry import get_entry
    from testbed.stats import wilson

    d = _photo_folder(tmp_path)
    espresso = list(get_entry("mobilenet_v2").labels).index("espresso")
    t = score_photos(d, "mobilenet_v2", target=espresso)
    assert (t.rate.k, t.rate.n) == (2, 3)  # the two coffee photos are 'espresso', the cat is not
    assert (t.rate.low, t.rate.high) == (wilson(2, 3).low, wilson(2, 3).high)
    assert [p["success"] for p in t.per_photo] == [True, True, False]
    skipped = dict(t.skipped)  # bad photos are named with their reason, never dropped silently
    assert set(skipped) == {str(d / "d_broken.jpg"), str(d / "e_gray.png")}
    assert "could not be decoded" in skipped[str(d / "d_broken.jpg")] or "decode" in skipped[str(d / "d_broken.jpg")]
    assert "grayscale" in skipped[str(d / "e_gray.png")].lower() or "mode" in skipped[str(d / "e_gray.png")].lower()
    u = score_photos(d, "mobilenet_v2", target=espresso, untargeted=True)
    assert (u.rate.k, u.rate.n) == (1, 3) and [p["success"] for p in u.per_photo] == [False, False, True]
    files = write_photo_scores(t, tmp_path / "out")
    data = json.loads(files["scores"].read_text())
    assert data["rate"]["k"] == 2 and data["rate"]["n"] == 3 and len(data["photos"]) == 3
    assert data["photos"][0]["top5"][0]["name"] == "espresso" and len(data["skipped"]) == 2
    assert files["contact_sheet"].stat().st_size > 1000


def test_score_cli_prints_k_n_interval_names_bad_photos_and_exits_2_when_none_is_readable(tmp_path, capsys):
    from pipelines.main import main

    d = _photo_folder(tmp_path)
    assert main(["score", str(d), "--model", "mobilenet_v2", "--target", "espresso", "--out",
                 str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    assert "top-1 is 'espresso' on 2/3 photos = 66.7% [20.8, 93.9]" in out and "2 photo(s) skipped" in out
    assert "skipped " + str(d / "d_broken.jpg") in err and "skipped " + str(d / "e_gray.png") in err
    assert main(["score", str(d), "--target", "espresso", "--untargeted", "--out", str(tmp_path / "u")]) == 0
    assert "top-1 is not 'espresso' on 1/3 photos" in capsys.readouterr()[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"nope")
    assert main(["score", str(bad), "--target", "espresso", "--out", str(tmp_path / "b")]) == 2
    assert "no photo could be scored" in capsys.readouterr()[1]
