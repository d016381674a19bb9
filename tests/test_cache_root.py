"""One cache root (``testbed.assets.cache_dir``) for assets, trained defences and GTSRB; commands write under
``runs/`` by default, never into the source tree's docs."""
from __future__ import annotations

from pathlib import Path

from testbed.assets import cache_dir, cache_subdir


def test_one_cache_root_and_the_legacy_defences_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "root"))
    assert cache_dir() == tmp_path / "root"
    legacy = tmp_path / "old" / "defences"
    assert cache_subdir("defences", legacy=legacy) == tmp_path / "root" / "defences"  # no legacy folder
    legacy.mkdir(parents=True)
    assert cache_subdir("defences", legacy=legacy) == legacy  # the earlier cache is still read, nothing retrained
    (tmp_path / "root" / "defences").mkdir(parents=True)
    assert cache_subdir("defences", legacy=legacy) == tmp_path / "root" / "defences"  # once moved: the root's
    monkeypatch.delenv("TESTBED_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "physical-testbed"


def test_no_default_output_in_the_source_tree():
    """Every default --out of every subcommand is under runs/ (or none): nothing is written into docs/."""
    from test_cli_help import COMMANDS

    outs = {}
    for path, parser in COMMANDS:
        for a in parser._actions:
            if "--out" in getattr(a, "option_strings", ()) and isinstance(a.default, str):
                outs[" ".join(path)] = a.default
    assert outs["testbed secure-eval"] == "runs/secure-eval"
    assert all(v.startswith("runs/") for v in outs.values()), outs
