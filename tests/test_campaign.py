"""Campaigns (pipelines.campaign) and the serial / local executors (pipelines.executors).

Cells are tiny RP2 sticker runs on the shipped sign-cnn (32x32), so worker processes need no test-only model."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from pipelines.executors import Executor
from testbed.errors import ConfigError


def tiny_campaign(**over) -> dict:
    """Four sticker cells (2 targets x 2 seeds), a few steps each, checkpoints every 2 steps."""
    data = {
        "name": "tiny-stickers",
        "attack": "sticker",
        "grid": {"target": ["no_entry", "yield"], "seed": [0, 1]},
        "options": {"model": "sign-cnn", "sign": "stop", "steps": 6, "batch_size": 4, "checkpoint_every": 2,
                    "device": "cpu"},
        "evaluation": {"eot_draws": 24},
    }  # no torch_threads: the default (1 per cell on every executor) is what makes the executors agree bit for bit
    data.update(over)
    return data


def cell_results(run_dir: Path) -> dict[str, tuple]:
    """Per cell: the optimised sticker's bytes, the per-draw evaluation success and the final loss."""
    import torch

    out = {}
    for cell in sorted((run_dir / "cells").iterdir()):
        m = json.loads((cell / "metrics.json").read_text())
        ev = torch.load(cell / "eval_success.pt", weights_only=True)
        out[cell.name] = ((cell / "perturbation.npy").read_bytes(), ev["success"].numpy().tobytes(),
                          ev["predictions"].numpy().tobytes(), m["final_loss"], m["success_rate"])
    return out


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    """The 4-cell campaign on the serial executor: the reference every executor must reproduce bit for bit."""
    from pipelines.campaign import parse_campaign, run_campaign

    out = tmp_path_factory.mktemp("campaign") / "serial"
    summary = run_campaign(parse_campaign(tiny_campaign()), out)
    assert len(summary.computed) == 4 and not summary.failed
    return out


# ------------------------------------------------------------------------------------------------ config
def test_config_round_trips_and_keeps_the_grid_order():
    from pipelines.campaign import parse_campaign

    cfg = parse_campaign(tiny_campaign())
    again = parse_campaign(json.loads(json.dumps(cfg.to_dict(), sort_keys=True)))  # as stored in config.json
    assert again == cfg
    assert cfg.torch_threads == 1  # absent: one thread per cell on every executor (bit-identical cells)
    free = parse_campaign(tiny_campaign(torch_threads=None))  # null: each executor's own choice
    assert free.torch_threads is None and parse_campaign(json.loads(json.dumps(free.to_dict()))) == free
    assert [c.key for c in again.cells()] == ["sticker_target=no_entry_seed=0", "sticker_target=no_entry_seed=1",
                                              "sticker_target=yield_seed=0", "sticker_target=yield_seed=1"]
    cell = cfg.cells()[1]
    assert cell.argv[:1] == ("sticker",) and "--eval-samples" in cell.argv and cell.argv[cell.argv.index("--seed") + 1] == "1"


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("experiments/campaign_*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_campaigns_parse(path):
    from pipelines.campaign import load_campaign, parse_campaign

    cfg = load_campaign(path)
    assert parse_campaign(cfg.to_dict()) == cfg and len(cfg.cells()) >= 4


@pytest.mark.parametrize("change, message", [
    ({"grid": {"target": ["no_such_sign"]}}, "no_such_sign"),
    ({"grid": {"stepz": [1, 2]}}, "has no option 'stepz'"),
    ({"grid": {"steps": [0]}}, "steps"),
    ({"grid": {"out": ["x"]}}, "set by the campaign"),
    ({"attack": "laser"}, "attack must be one of"),
    ({"grid": {"seed": []}}, "empty list"),
    ({"grid": {"eot": ["no-such-preset"]}}, "no-such-preset"),
    ({"evaluation": {"eot_draws": 0}}, "eot_draws"),
    ({"resources": {"num_gpus": -1}}, "num_gpus"),
    ({"colour": 1}, "unknown key"),
])
def test_bad_campaigns_are_refused_at_parse_time(change, message):
    from pipelines.campaign import CampaignError, parse_campaign

    data = tiny_campaign(**change)
    if "grid" in change:
        data["options"] = {k: v for k, v in data["options"].items() if k not in change["grid"]}
    with pytest.raises(CampaignError, match=message):
        parse_campaign(data)


def test_cli_bad_grid_exits_2_with_one_line(tmp_path, capsys):
    from pipelines.main import main

    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_campaign(grid={"target": ["no_entry", "nope"]})))
    assert main(["campaign", "run", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("testbed campaign run: error:") and "nope" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
    assert main(["campaign", "run", str(f), "--out", str(tmp_path / "o"), "--executor", "serial",
                 "--workers", "2"]) == 2
    assert "--workers is for --executor local" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ running
def test_serial_cells_are_ordinary_runs_resume_and_report(serial_run, tmp_path):
    from pipelines.campaign import parse_campaign, read_status, run_campaign
    from testbed.runs import run_dir_kind

    assert run_dir_kind(serial_run) == "campaign"
    for cell in (serial_run / "cells").iterdir():
        assert run_dir_kind(cell) == "sticker" and (cell / "checkpoints" / "step_00000006.pt").is_file()
    status = read_status(serial_run)
    assert {s["state"] for s in status.values()} == {"done"}
    res = status["sticker_target=yield_seed=1"]["result"]
    assert res["success"]["n"] == 24 and 0 <= res["success"]["low"] <= res["success"]["high"] <= 1
    again = run_campaign(parse_campaign(tiny_campaign()), serial_run)  # everything finished: all skipped
    assert again.computed == [] and len(again.skipped) == 4
    report = (serial_run / "report.md").read_text()
    assert "4 done, 0 failed" in report and "[95% CI]" in report and "pid" in report
    assert (serial_run / "plots" / "success.png").is_file() and (serial_run / "report.html").is_file()
    from pipelines.run_reports import (  # what `testbed report DIR` calls
        summary_rows,
        write_run_report,
    )

    (serial_run / "report.md").unlink()
    assert write_run_report(serial_run) == serial_run / "report.md" and "4 done" in (serial_run / "report.md").read_text()
    rows = [r for r in summary_rows(serial_run) if r.measure.startswith("optimised")]
    assert len(rows) == 4 and all(r.rate.n == 24 for r in rows)
    with pytest.raises(ConfigError, match="steps"):  # another campaign in the same folder is refused
        run_campaign(parse_campaign(tiny_campaign(options={**tiny_campaign()["options"], "steps": 7})), serial_run)


def test_failed_cell_is_recorded_and_retried_on_request(tmp_path, capsys):
    """A sticker mask file that does not exist yet fails its cell at run time (the others finish); once the
    file exists, --retry-failed runs only that cell."""
    import torch

    from pipelines.main import main
    from testbed.runs import save_image

    mask = tmp_path / "mask.png"
    data = tiny_campaign(grid={"mask": ["rects", str(mask)]}, options={**tiny_campaign()["options"], "target": "yield"})
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main(["campaign", "run", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 cell(s) failed" in err and "--retry-failed" in err
    status = {p.stem: json.loads(p.read_text()) for p in (out / "status").glob("*.json")}
    failed = [s for s in status.values() if s["state"] == "failed"]
    assert len(failed) == 1 and "mask.png" in failed[0]["error"]
    assert "failed:" in (out / "report.md").read_text()
    assert main(["campaign", "run", str(f), "--out", str(out)]) == 2  # not retried unless asked
    capsys.readouterr()
    m = torch.zeros(1, 3, 128, 128)
    m[..., 10:20, 30:90] = 1
    save_image(m, mask)
    assert main(["campaign", "run", str(f), "--out", str(out), "--retry-failed"]) == 0
    printed = capsys.readouterr()
    assert "1 cell(s) computed, 1 resumed" in printed.out
    assert all(json.loads(p.read_text())["state"] == "done" for p in (out / "status").glob("*.json"))


def _kill_when_checkpointed(out: Path, key: str, timeout: float = 120.0) -> int:
    """SIGKILL the process running cell ``key`` once it has written a checkpoint and before it finishes."""
    running, ckpts = out / "running" / f"{key}.json", out / "cells" / key / "checkpoints"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if running.is_file() and ckpts.is_dir() and any(ckpts.glob("step_*.pt")) \
                and not (out / "cells" / key / "metrics.json").exists():
            pid = json.loads(running.read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.01)
    raise AssertionError(f"cell {key} never reached a checkpoint")


def test_local_executor_is_bit_identical_and_survives_a_killed_worker(tmp_path):
    """Two worker processes (1 torch thread each); one is SIGKILLed mid-cell: the pool is restarted, the cell
    resumes from its last checkpoint, and every cell's result equals the serial run's bit for bit."""
    import threading

    from pipelines.campaign import parse_campaign, read_status, run_campaign
    from pipelines.executors import LocalExecutor

    cfg = parse_campaign(tiny_campaign(options={**tiny_campaign()["options"], "steps": 24, "checkpoint_every": 3}))
    ref = tmp_path / "ref"
    run_campaign(cfg, ref)  # the serial reference at 24 steps
    out = tmp_path / "local"
    victim = "sticker_target=no_entry_seed=0"
    killed: list[int] = []
    t = threading.Thread(target=lambda: killed.append(_kill_when_checkpointed(out, victim)), daemon=True)
    t.start()
    executor = LocalExecutor(2)
    summary = run_campaign(cfg, out, executor)
    t.join(5)
    assert killed and executor.restarts >= 1 and len(summary.computed) == 4 and not summary.failed
    res = read_status(out)[victim]["result"]
    assert res["resumed_from_step"] > 0  # resumed from its checkpoint, not from step 0
    assert read_status(out)[victim]["worker"]["pid"] != killed[0]
    assert cell_results(out) == cell_results(ref)


# ------------------------------------------------------------------------------------------------ experiments
def sign_cnn_experiment(**over) -> dict:
    """A tiny Kurakin experiment on the shipped sign-cnn (importable by any worker process), no channel."""
    cfg = {"name": "exec-kurakin", "kind": "kurakin", "seed": 0, "models": ["sign-cnn"], "attacks": ["fgsm", "bim"],
           "eps": [4, 16], "images": {"names": ["chelsea", "coffee"], "crops_per_photo": 2},
           "channel": {"kind": "none"}, "batch_size": 4, "examples": 0, "torch_threads": 1}
    cfg.update(over)
    return cfg


class _TaskExecutor(Executor):
    """Runs the tasks in this process through the executors' task wrapper (not a SerialExecutor, so the
    experiment runner ships its cells as tasks, as it does to worker processes and Ray)."""

    threads = None

    def describe(self) -> str:
        return "inline tasks"

    def run(self, tasks, on_done):
        from pipelines.executors import Outcome, run_task

        for t in reversed(tasks):  # another order than the serial runner's
            on_done(Outcome(**run_task(t.fn, t.args, t.key, "inline", self.threads)))


def test_experiment_cells_run_as_executor_tasks_equal_serial(tmp_path):
    import pipelines.kinds  # noqa: F401
    from pipelines.experiment import read_cells, run_experiment

    strip = lambda cells: {k: {f: v for f, v in c.items() if f != "seconds"} for k, c in cells.items()}
    serial = run_experiment(sign_cnn_experiment(), tmp_path / "serial", progress=False)
    tasks = run_experiment(sign_cnn_experiment(), tmp_path / "tasks", progress=False, executor=_TaskExecutor())
    assert sorted(tasks.computed) == sorted(serial.computed) and len(serial.computed) == 5  # clean + 2 x 2
    assert strip(read_cells(tmp_path / "tasks")) == strip(read_cells(tmp_path / "serial"))
    assert json.loads((tmp_path / "tasks" / "run.json").read_text())["executor"] == "inline tasks"
    again = run_experiment(sign_cnn_experiment(), tmp_path / "tasks", progress=False, executor=_TaskExecutor())
    assert again.computed == [] and len(again.skipped) == 5


def test_evaluate_takes_the_executor_options(tmp_path, capsys):
    from pipelines.main import main

    f = tmp_path / "e.yaml"
    f.write_text(yaml.safe_dump(sign_cnn_experiment()))
    assert main(["evaluate", str(f), "--out", str(tmp_path / "o"), "--executor", "ray", "--workers", "2"]) == 2
    assert "--workers is for --executor local, not ray" in capsys.readouterr().err
    assert main(["evaluate", str(f), "--out", str(tmp_path / "o"), "--executor", "local", "--address", "auto"]) == 2
    assert "--address is for --executor ray" in capsys.readouterr().err


def test_digital_cells_are_checked_at_parse_time_and_run(tmp_path):
    """`testbed attack digital` cells: the attack is built at parse time (FGSM with steps 3 is refused there);
    a good grid runs as ordinary `attack digital` folders (result.json) and the report counts the image."""
    from pipelines.campaign import (
        CampaignError,
        parse_campaign,
        read_status,
        run_campaign,
    )

    data = {"name": "digital", "attack": "digital", "grid": {"attack": ["fgsm", "pgd"]},
            "options": {"model": "sign-cnn", "image": "chelsea", "eps": 8, "steps": 3}}
    with pytest.raises(CampaignError, match="cell digital_attack=fgsm: .*FGSM"):
        parse_campaign(data)
    data["grid"] = {"attack": ["pgd"], "eps": [4, 8]}
    del data["options"]["eps"]
    summary = run_campaign(parse_campaign(data), tmp_path / "d")
    assert len(summary.computed) == 2 and not summary.failed
    for key, st in read_status(tmp_path / "d").items():
        assert (tmp_path / "d" / "cells" / key / "result.json").is_file() and st["result"]["success"]["n"] == 1


@pytest.mark.parametrize("how", ["address", "auto"])
def test_no_cluster_is_refused_in_one_line_before_anything_is_written(how, tmp_path, capsys, monkeypatch):
    """A Ray address nobody answers at (given, or found by `auto` in RAY_ADDRESS / a stale address file): exit 2 at
    once, one line, no campaign folder (ray.init alone would retry for minutes)."""
    pytest.importorskip("ray")
    import socket

    from pipelines.main import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"  # a port nobody listens on
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_campaign()))
    extra = ["--address", dead]
    if how == "auto":
        monkeypatch.setenv("RAY_ADDRESS", dead)
        extra = ["--address", "auto"]
    started = time.time()
    assert main(["campaign", "run", str(f), "--out", str(tmp_path / "o"), "--executor", "ray", *extra]) == 2
    err = capsys.readouterr().err.strip()
    port = dead.rpartition(":")[2]  # (auto: Ray resolves 127.0.0.1 to this machine's address)
    assert "no Ray cluster answers at " in err and f":{port}" in err and "\n" not in err
    assert ("found by --address auto" in err) == (how == "auto") and time.time() - started < 60
    assert not (tmp_path / "o").exists()
