"""Where independent cells run: serially in this process, in local worker processes, or as Ray tasks.

One interface for the campaign runner (``pipelines.campaign``) and the experiment runner
(``pipelines.experiment``): a list of :class:`Task` (a key, a module-level function and its picklable arguments,
the CPUs/GPUs it declares) goes to ``executor.run(tasks, on_done)``, and ``on_done`` is called in this (the
driver's) process with one :class:`Outcome` per task, in completion order.

* ``SerialExecutor`` (``--executor serial``, the default): one task after another in this process.
* ``LocalExecutor`` (``--executor local --workers N``): N worker processes (``spawn``), each with
  ``torch.set_num_threads(1)`` when N > 1 (N processes x 1 thread on N cores beats N x N threads fighting).
  A worker that dies (killed, out of memory) breaks the pool: a new pool is started and every task not yet
  finished is submitted again (at most ``max_restarts`` times).
* ``RayExecutor`` (``--executor ray --address auto|HOST:PORT``): Ray core tasks (``ray.remote`` with
  ``num_cpus``/``num_gpus`` from the task, ``max_retries`` for system failures): Ray reschedules a task whose
  worker process or node died. Ray is the optional ``ray`` extra; nothing else imports it.

What a task writes. The task itself writes its artefacts (run directory, checkpoints) where it runs; only a small
JSON-able result travels back, and the driver records it. Checkpoints have to be written by the task as it goes --
a rescheduled task resumes from them after its worker died, which a result returned at the end cannot give -- so on
a multi-machine Ray cluster the output folder must be on a file system every node mounts (a task that cannot see
it fails with a ConfigError saying so). The driver is the only writer of the campaign's own index (one status
file per cell), so no two processes ever write the same file.

Errors. An exception in a task (a bad cell, a TestbedError) is caught in the worker and comes back as a failed
Outcome with its one-line message; the other tasks go on. A dead worker is not a failed cell: the task is run
again (and resumes from its checkpoint). ``KeyboardInterrupt`` in the driver stops everything.

Determinism. A task's result depends only on its arguments: every executor runs the same function on the same
arguments, and sets the same torch thread count when one is given (``threads``), so on CPU the per-cell results
are bit-identical on every executor (tests/test_campaign.py, tests/test_executors_ray.py).
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from testbed.errors import ConfigError, TestbedError

EXECUTORS = ("serial", "local", "ray")
#: the Ray version the ``ray`` extra pins (pyproject.toml)
RAY_REQUIREMENT = "ray==2.60.*"


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args)`` returns a JSON-able dict. ``fn`` must be a module-level function and
    ``args`` picklable (they cross a process or network boundary on the local and Ray executors)."""

    key: str
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...] = ()
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class Outcome:
    """What came back for one task: its result, or the one-line error it raised; where and how long it ran."""

    key: str
    ok: bool
    result: dict[str, Any] | None
    error: str | None
    seconds: float
    worker: dict[str, Any] = field(default_factory=dict)  # executor, host, pid, torch threads

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_task(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...], key: str, executor: str,
             threads: int | None) -> dict[str, Any]:
    """Run one task where it is (this process, a worker process, a Ray worker) and return its Outcome as a dict.

    Sets torch's thread count first when ``threads`` is given; an exception becomes ``ok: False`` with its
    one-line message (a TestbedError's message is the user's; anything else also keeps the innermost frame)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    from testbed.machine import machine_line

    worker = {"executor": executor, "host": socket.gethostname(), "pid": os.getpid(),
              "torch_threads": torch.get_num_threads(), "machine": machine_line()}
    started = time.perf_counter()
    try:
        result = fn(*args)
    except TestbedError as exc:
        return Outcome(key, False, None, _one_line(exc), round(time.perf_counter() - started, 3), worker).as_dict()
    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the others go on
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
        return Outcome(key, False, None, _one_line(exc) + where, round(time.perf_counter() - started, 3),
                       worker).as_dict()
    return Outcome(key, True, result, None, round(time.perf_counter() - started, 3), worker).as_dict()


def _outcome(d: dict[str, Any]) -> Outcome:
    return Outcome(**d)


class Executor:
    """Runs tasks and reports each :class:`Outcome` to ``on_done`` in the driver's process."""

    name = "executor"

    def describe(self) -> str:
        return self.name

    def start(self) -> None:
        """Check that the executor can run anything (e.g. connect to the Ray cluster), before a runner writes
        its output folder; a ConfigError says why not."""

    def run(self, tasks: Sequence[Task], on_done: Callable[[Outcome], None]) -> None:
        raise NotImplementedError


class SerialExecutor(Executor):
    """One task after another in this process (``threads``: torch threads for every task; None leaves them)."""

    name = "serial"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def run(self, tasks: Sequence[Task], on_done: Callable[[Outcome], None]) -> None:
        for t in tasks:
            on_done(_outcome(run_task(t.fn, t.args, t.key, self.name, self.threads)))


def _worker_init(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


class LocalExecutor(Executor):
    """``workers`` processes on this machine (``spawn`` start method). ``threads``: torch threads per worker
    (default 1 when ``workers`` > 1, else torch's default). A dead worker breaks the pool; a new one is started
    and the unfinished tasks are submitted again, at most ``max_restarts`` times."""

    name = "local"

    def __init__(self, workers: int, threads: int | None = None, max_restarts: int = 3) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"--workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.threads = threads if threads is not None else (1 if workers > 1 else None)
        self.max_restarts = max_restarts
        self.restarts = 0

    def describe(self) -> str:
        return f"local ({self.workers} worker process(es), {self.threads or 'default'} torch thread(s) each)"

    def run(self, tasks: Sequence[Task], on_done: Callable[[Outcome], None]) -> None:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        pending = {t.key: t for t in tasks}
        ctx = multiprocessing.get_context("spawn")
        while pending:
            pool = ProcessPoolExecutor(max_workers=min(self.workers, len(pending)), mp_context=ctx,
                                       initializer=_worker_init, initargs=(self.threads,))
            broken = False
            try:
                futures = {pool.submit(run_task, t.fn, t.args, t.key, self.name, self.threads): t.key
                           for t in pending.values()}
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in done:
                        key = futures.pop(f)
                        try:
                            outcome = _outcome(f.result())
                        except BrokenProcessPool:
                            broken = True
                            continue
                        del pending[key]
                        on_done(outcome)
                    if broken:
                        break
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                for p in list(getattr(pool, "_processes", {}).values()):  # do not leave workers computing
                    p.terminate()
                raise
            pool.shutdown(wait=True, cancel_futures=True)
            if broken:
                self.restarts += 1
                if self.restarts > self.max_restarts:
                    raise TestbedError(f"local executor: worker processes died {self.restarts} times; "
                                       f"{len(pending)} cell(s) unfinished (rerun the command to resume them)")
                from testbed.runs import warn

                warn(f"a worker process died; restarting the pool and resubmitting {len(pending)} unfinished "
                     "cell(s) (they resume from their last checkpoint)")


def _ray_entry(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...], key: str,
               threads: int | None) -> dict[str, Any]:
    return run_task(fn, args, key, "ray", threads)


def ray_available() -> bool:
    """Whether the optional ``ray`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


class RayExecutor(Executor):
    """Ray core tasks on the cluster at ``address`` (``auto``: the cluster this machine belongs to, or
    ``HOST:PORT`` of its head). Each task declares its ``num_cpus``/``num_gpus``; ``max_retries`` reschedules a
    task whose worker died (it resumes from its checkpoint). ``threads``: torch threads per task (default: the
    task's ``num_cpus``, rounded, at least 1)."""

    name = "ray"

    def __init__(self, address: str = "auto", threads: int | None = None, max_retries: int = 3) -> None:
        if not ray_available():
            raise ConfigError(f"--executor ray needs Ray: pip install '{RAY_REQUIREMENT}' (the testbed's `ray` extra, "
                              "installed by setup.sh)")
        self.address = check_ray_address(address)
        self.threads = threads
        self.max_retries = max_retries
        self.cluster: dict[str, Any] = {}

    def describe(self) -> str:
        return f"ray (cluster at {self.address}: {self.cluster.get('nodes', '?')} node(s), " \
               f"{self.cluster.get('CPU', '?')} CPU(s), {self.cluster.get('GPU', 0)} GPU(s))"

    def start(self) -> None:
        self._connect()

    def _probe(self) -> None:
        """Fail fast, in one line, when no Ray cluster answers at the address (``ray.init`` itself retries for
        minutes, e.g. when ``auto`` finds the address file of a cluster that has stopped)."""
        address, found = self.address, ""
        if address == "auto":
            try:
                from ray._private.services import canonicalize_bootstrap_address
            except ImportError:  # another Ray layout: let ray.init find it
                return
            try:
                address = canonicalize_bootstrap_address("auto") or ""
            except Exception:  # noqa: BLE001 - Ray's own lookup failed: no cluster found
                address = ""
            if not address:
                raise ConfigError("--executor ray --address auto: no Ray cluster found on this machine (start one "
                                  "with `ray start --head`, set RAY_ADDRESS, or give --address HOST:PORT)")
            found = " (found by --address auto)"
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ConfigError(f"--executor ray: no Ray cluster answers at {address}{found} ({reason}); start one "
                              "with `ray start --head` or give the head's HOST:PORT") from None

    def _connect(self) -> Any:
        import ray

        if ray.is_initialized() and self.address != "auto":  # this process is connected already: to that cluster?
            current = str(ray.get_runtime_context().gcs_address or "")
            if current.rpartition(":")[2] != self.address.rpartition(":")[2]:
                raise ConfigError(f"--executor ray --address {self.address}: this process is already connected to "
                                  f"the Ray cluster at {current} (ray.shutdown() first)")
        if not ray.is_initialized():
            self._probe()
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--executor ray: cannot connect to a Ray cluster at {self.address} "
                                  f"({_one_line(exc)[:200]}); start one with `ray start --head`") from None
        res = ray.cluster_resources()
        self.cluster = {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "CPU": res.get("CPU", 0),
                        "GPU": res.get("GPU", 0)}
        return ray

    def run(self, tasks: Sequence[Task], on_done: Callable[[Outcome], None]) -> None:
        ray = self._connect()
        remote = ray.remote(_ray_entry)
        refs = {}
        for t in tasks:
            threads = self.threads or max(1, round(t.num_cpus))
            ref = remote.options(num_cpus=t.num_cpus, num_gpus=t.num_gpus, max_retries=self.max_retries,
                                 retry_exceptions=False, name=f"cell:{t.key}"[:120]
                                 ).remote(t.fn, t.args, t.key, threads)
            refs[ref] = t
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    t = refs.pop(ref)
                    try:
                        outcome = _outcome(ray.get(ref))
                    except ray.exceptions.RayError as exc:  # its worker died more than max_retries times
                        outcome = Outcome(t.key, False, None, f"ray: {_one_line(exc)[:300]}", 0.0,
                                          {"executor": "ray"})
                    on_done(outcome)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise


def check_ray_address(address: str) -> str:
    """``auto`` or ``HOST:PORT`` (port 1-65535); ConfigError otherwise."""
    if address == "auto":
        return address
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address must be 'auto' or HOST:PORT of a Ray head, got {address!r}")
    return address


def make_executor(name: str = "serial", *, workers: int | None = None, address: str | None = None,
                  threads: int | None = None) -> Executor:
    """The executor called ``name`` (serial | local | ray); ConfigError for an unknown name or options that do
    not belong to it (``--workers`` is for local, ``--address`` for ray)."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if workers is not None and name != "local":
        raise ConfigError(f"--workers is for --executor local, not {name}")
    if address is not None and name != "ray":
        raise ConfigError(f"--address is for --executor ray, not {name}")
    if name == "serial":
        return SerialExecutor(threads)
    if name == "local":
        return LocalExecutor(workers if workers is not None else (os.cpu_count() or 1), threads)
    return RayExecutor(address or "auto", threads)


def add_executor_options(parser: Any) -> None:
    """``--executor serial|local|ray``, ``--workers N`` (local) and ``--address auto|HOST:PORT`` (ray)."""
    from testbed import cli_types

    g = parser.add_argument_group("executor (docs/campaigns.md)")
    g.add_argument("--executor", choices=EXECUTORS, default="serial",
                   help="serial (default): one cell after another here; local: --workers processes on this "
                        "machine (1 torch thread each); ray: Ray core tasks on the cluster at --address")
    g.add_argument("--workers", type=cli_types.count(1024), help="worker processes for --executor local "
                                                                 "(default: the number of CPU cores)")
    g.add_argument("--address", help="Ray cluster for --executor ray: auto (default) or HOST:PORT of its head")


def executor_from_args(args: Any, threads: int | None = None) -> Executor:
    """The executor the ``--executor/--workers/--address`` options ask for."""
    return make_executor(args.executor, workers=args.workers, address=args.address, threads=threads)
