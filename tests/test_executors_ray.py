"""The Ray executor on a real local cluster: a head and one worker node on 127.0.0.1, started in the test (one
per module) and torn down after. Needs the optional ``ray`` extra (setup.sh installs it)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from test_campaign import (
    _kill_when_checkpointed,
    cell_results,
    sign_cnn_experiment,
    tiny_campaign,
)

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(*args: str) -> subprocess.Popen:
    """``ray start ... --block`` in its own session, so that the test can end exactly the processes it started
    (the node's group) and nothing else."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                             "--disable-usage-stats", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            if sig == signal.SIGTERM:
                time.sleep(1)  # let the node's children follow their parent; then make sure
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node (1 CPU each) on 127.0.0.1; yields the head's address."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _ray_start("--head", "--port", str(port), "--include-dashboard", "false")
    worker = None
    try:
        deadline = time.time() + 120
        while True:  # the head is up when a driver can connect
            try:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
                break
            except Exception:
                if time.time() > deadline or head.poll() is not None:
                    raise
                time.sleep(1)
        worker = _ray_start("--address", address)
        while sum(1 for n in ray.nodes() if n.get("Alive")) < 2:
            assert time.time() < deadline and worker.poll() is None, "the worker node did not join"
            time.sleep(0.5)
        yield address
    finally:
        ray.shutdown()
        for p in (worker, head):
            if p is not None:
                _stop(p)


def _config():
    from pipelines.campaign import parse_campaign

    return parse_campaign(tiny_campaign(options={**tiny_campaign()["options"], "steps": 30, "checkpoint_every": 3}))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The campaign on the serial executor (1 torch thread, as every Ray task gets)."""
    from pipelines.campaign import run_campaign

    out = tmp_path_factory.mktemp("ray") / "serial"
    run_campaign(_config(), out)
    return cell_results(out)


def test_ray_campaign_is_bit_identical_to_serial(cluster, reference, tmp_path):
    from pipelines.campaign import read_status, run_campaign
    from pipelines.executors import RayExecutor

    executor = RayExecutor(cluster)
    summary = run_campaign(_config(), tmp_path / "ray", executor)
    assert len(summary.computed) == 4 and not summary.failed
    assert executor.cluster["nodes"] == 2 and executor.cluster["CPU"] == 2
    status = read_status(tmp_path / "ray")
    assert {s["worker"]["executor"] for s in status.values()} == {"ray"}
    assert {s["worker"]["torch_threads"] for s in status.values()} == {1}
    assert cell_results(tmp_path / "ray") == reference
    assert "ray (cluster at 127.0.0.1" in (tmp_path / "ray" / "report.md").read_text()


def test_killed_ray_worker_is_rescheduled_and_resumes(cluster, reference, tmp_path):
    """SIGKILL the worker process running a cell once it has checkpointed: Ray reschedules the task, the cell
    resumes from its checkpoint, and the campaign ends with the serial executor's results, bit for bit."""
    from pipelines.campaign import read_status, run_campaign
    from pipelines.executors import RayExecutor

    out = tmp_path / "ray-kill"
    victim = "sticker_target=yield_seed=0"
    killed: list[int] = []
    t = threading.Thread(target=lambda: killed.append(_kill_when_checkpointed(out, victim)), daemon=True)
    t.start()
    summary = run_campaign(_config(), out, RayExecutor(cluster))
    t.join(5)
    assert killed, "the worker was not killed"
    assert len(summary.computed) == 4 and not summary.failed
    status = read_status(out)[victim]
    assert status["worker"]["pid"] != killed[0] and status["result"]["resumed_from_step"] > 0
    assert cell_results(out) == reference
    assert json.loads((out / "run.json").read_text())["failed"] == {}


def test_experiment_cells_on_ray_equal_serial(cluster, tmp_path):
    """The harness's experiment runner on the same executor interface: each cell a Ray task writing its cell file
    into the run directory; the cells equal the serial run's."""
    import pipelines.kinds  # noqa: F401
    from pipelines.executors import RayExecutor
    from pipelines.experiment import read_cells, run_experiment

    strip = lambda cells: {k: {f: v for f, v in c.items() if f != "seconds"} for k, c in cells.items()}
    run_experiment(sign_cnn_experiment(), tmp_path / "serial", progress=False)
    summary = run_experiment(sign_cnn_experiment(), tmp_path / "ray", progress=False, executor=RayExecutor(cluster))
    assert len(summary.computed) == 5
    assert strip(read_cells(tmp_path / "ray")) == strip(read_cells(tmp_path / "serial"))

