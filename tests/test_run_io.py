"""``testbed.runs.write_atomic``, the one atomic writer: bytes, text and writer functions; a failure of any kind
leaves the old file and no temporary file; the options (mode, verify, sync_folder); ``WriteError``'s message."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from testbed import runs
from testbed.errors import TestbedError
from testbed.runs import WriteError, write_atomic


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_bytes_text_and_writer_functions(tmp_path):
    assert write_atomic(tmp_path / "a" / "b.bin", b"\x00\x01") == tmp_path / "a" / "b.bin"  # parents created
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    write_atomic(tmp_path / "t.txt", "ε = 8/255\n")
    assert (tmp_path / "t.txt").read_bytes() == "ε = 8/255\n".encode("utf-8")
    x = torch.arange(6, dtype=torch.float32).view(2, 3)
    write_atomic(tmp_path / "x.npy", lambda fh: np.save(fh, x.numpy()))  # np.save into the file object: no ".npy"
    write_atomic(tmp_path / "x.pt", lambda fh: torch.save(x, fh))
    assert np.array_equal(np.load(tmp_path / "x.npy"), x.numpy())
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True), x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "t.txt", "x.npy", "x.pt"]


def test_mode_default_and_option(tmp_path):
    write_atomic(tmp_path / "pub", "x")
    write_atomic(tmp_path / "private", "x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "pub").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


@pytest.mark.parametrize("failure", ["fsync", "replace", "writer", "verify"])
def test_a_failure_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, failure):
    target = tmp_path / "cell.json"
    write_atomic(target, "old")

    def disk_full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    def broken_writer(fh):
        fh.write(b"half")
        raise ValueError("encoder failed")

    def refuse(path):
        assert path.read_bytes() == b"new" and path != target  # the complete temporary file, before the rename
        raise TestbedError("checksum mismatch")

    data, kwargs = "new", {}
    if failure == "fsync":
        monkeypatch.setattr(os, "fsync", disk_full)
    elif failure == "replace":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    elif failure == "writer":
        data = broken_writer
    else:
        kwargs = {"verify": refuse}
    expected = {"fsync": (WriteError, "disk full"), "replace": (WriteError, "permission denied"),
                "writer": (ValueError, "encoder failed"), "verify": (TestbedError, "checksum mismatch")}[failure]
    with pytest.raises(expected[0], match=expected[1]) as exc:
        write_atomic(target, data, **kwargs)
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    if expected[0] is WriteError:
        message = str(exc.value)
        assert message.startswith(f"could not write file {target}: ") and "\n" not in message
        assert "[Errno" not in message and "the old file, if any, is unchanged" in message
        assert exc.value.errno in (errno.ENOSPC, errno.EACCES) and isinstance(exc.value, (OSError, TestbedError))


def test_write_error_names_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WriteError, match=r"could not write report .*notes.txt/r.md: .*notes.txt is a file, not a "
                                         r"folder"):
        write_atomic(tmp_path / "notes.txt" / "r.md", "x", what="report")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_sync_folder_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode) and "folder" or "file")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_atomic(tmp_path / "a", "x")
    write_atomic(tmp_path / "b", "x", sync_folder=True)
    assert synced == ["file", "file", "folder"]


def test_checkpoints_sync_their_folder(tmp_path, monkeypatch):
    calls = []
    real = runs.write_atomic
    monkeypatch.setattr(runs, "write_atomic", lambda path, data, **k: calls.append(k) or real(path, data, **k))
    run = runs.RunDir(tmp_path / "run", {"attack": "patch", "steps": 3})
    run.save_checkpoint({"w": torch.zeros(2)}, 1)
    assert calls[-1] == {"sync_folder": True} and run.latest_checkpoint()["step"] == 1


def test_the_run_io_module_does_not_load_torch():
    """A camera or capture process that only writes files through testbed.runs does not pay for torch."""
    code = "import sys, testbed.runs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
