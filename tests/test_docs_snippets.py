"""The docs say what the commands print: every ``console`` block in README.md and docs/*.md is run (doctest style:
``$ testbed ...`` lines are commands, the lines after one are its exact output) and compared. Keep them quick.
Also: the README's set-up options are the ones ``setup.sh`` accepts (checked with its ``--dry-run``)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _snippets() -> list[tuple[str, str, list[str]]]:
    """(where, command, expected output lines) of every ``$ testbed ...`` line in a ``console`` block."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"^```console\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
            line_no = text[: block.start()].count("\n") + 2
            current: tuple[str, str, list[str]] | None = None
            for i, line in enumerate(block.group(1).splitlines()):
                if line.startswith("$ "):
                    current = (f"{doc.relative_to(ROOT)}:{line_no + i}", line[2:], [])
                    out.append(current)
                elif current is not None:
                    current[2].append(line)
    return out


SNIPPETS = _snippets()


def test_the_docs_have_snippets():
    cmds = {c for _, c, _ in SNIPPETS}
    assert {"testbed models list", "testbed --version"} <= cmds


#: runs every snippet's command in ONE fresh process (as a reader would: no model a test registered in this process
#: is listed), printing {command: [exit status, stdout]} as JSON
_RUNNER = """
import contextlib, io, json, sys
from pipelines.main import main
out = {}
for argv in json.loads(sys.argv[1]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    out[" ".join(argv)] = [rc, buf.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def printed() -> dict[str, list]:
    argvs = [shlex.split(cmd)[1:] for _, cmd, _ in SNIPPETS]
    run = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(argvs)], capture_output=True, text=True, check=False,
                         timeout=600, env={**os.environ, "TESTBED_DEVICE": "cpu"}, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-1000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.parametrize("where,cmd,expected", SNIPPETS, ids=[w for w, _, _ in SNIPPETS])
def test_documented_output_is_what_the_command_prints(where, cmd, expected, printed):
    argv = shlex.split(cmd)
    assert argv[0] == "testbed", f"{where}: console blocks hold testbed commands only"
    rc, out = printed[" ".join(argv[1:])]
    assert rc == 0, f"{where}: `{cmd}` failed"
    got = [line.rstrip() for line in out.rstrip("\n").splitlines()]
    assert got == [line.rstrip() for line in expected], f"{where}: `{cmd}` prints something else now"


def test_setup_sh_options_as_documented():
    """setup.sh's options from the README (dry run: nothing is installed) and its refusal of an unknown one."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for opt in ("--no-demo", "--cpu", "--with-tcmalloc", "--dry-run"):
        assert f"bash setup.sh {opt}" in readme, opt
    run = subprocess.run(["bash", str(ROOT / "setup.sh"), "--dry-run", "--no-demo", "--cpu"], capture_output=True,
                         text=True, check=False, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    pins = " ".join(re.findall(r'"((?:torch|torchvision)==[^"]+)"', (ROOT / "pyproject.toml").read_text()))
    assert f"+ .venv/bin/python -m pip install --quiet --index-url https://download.pytorch.org/whl/cpu {pins}" in lines
    assert "+ .venv/bin/testbed assets fetch" in lines and not any("testbed demo" in s for s in lines)
    assert not any("apt-get install" in s and s.startswith("+") for s in lines)  # no consent: no system package
    bad = subprocess.run(["bash", str(ROOT / "setup.sh"), "--bogus"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and "unknown option '--bogus'" in bad.stderr
