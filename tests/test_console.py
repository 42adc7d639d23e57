"""One console: the parent's live display, plain lines elsewhere, a one-line Ctrl-C (exit 130)
and no leaked-resource warning when the qbench process is killed."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from qbench.run.console import LiveConsole, PlainConsole, duration

from .conftest import run_command
from .test_runner import tiny


def test_live_block_is_redrawn_below_the_lines_and_erased_at_the_end():
    out = io.StringIO()
    c = LiveConsole(out)
    c.begin(groups=2, steps=100)
    c.started(0, "noise lambda=0.01 seed=0 (mbt2018-mean)", 50)
    c.progress(0, 25, {"loss": 1.25, "bpp": 0.5})
    block = c.block(200)
    assert block[0].startswith("[") and "0/2 groups" in block[0] and "25 % of steps" in block[0]
    assert "ETA" in block[0] and "25/50 loss 1.250 bpp 0.500" in block[1]
    assert all(len(line) < 60 for line in c.block(60))
    c.line("[1/2] a finished row")
    text = out.getvalue()
    # the block is erased (cursor up, clear) before the line, then drawn again below it
    assert "\x1b[2F\x1b[J[1/2] a finished row\n[" in text
    c.finished(0)
    assert c.done == 1 and c.done_steps == 50 and 0 not in c.busy
    c.close()
    assert out.getvalue().endswith("\x1b[1F\x1b[J") and c.drawn == 0


def test_plain_console_is_one_line_per_event():
    said = []
    c = PlainConsole(said.append)
    c.begin(groups=1, steps=10)
    c.started(1, "ste lambda=0.1 seed=0 (x)", 10)
    c.progress(1, 5, {"loss": 1.0})
    c.finished(1)
    assert said == ["[worker 1] start ste lambda=0.1 seed=0 (x), 10 steps"]
    assert duration(73) == "1m13s" and duration(4000) == "1h06m" and duration(5) == "5s"


def _pty_run(argv, env, until: str, timeout: float = 300) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal; type Ctrl-C once ``until`` was printed."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        # a command typed at a terminal starts with Ctrl-C's default action, also when
        # pytest itself was started with SIGINT ignored (`pytest &` in a script)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execvpe(argv[0], argv, env)
    out, sent, deadline = b"", False, time.time() + timeout
    while time.time() < deadline:
        if not sent and until.encode() in out:
            os.write(fd, b"\x03")  # as typed: SIGINT to the terminal's foreground group
            sent = True
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal closed: everyone exited
                break
            if not data:
                break
            out += data
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.slow
def test_ctrl_c_on_a_terminal_says_one_line_and_exits_130(tmp_path):
    m = tiny(tmp_path, '["noise", "ste"]', lambdas="[0.001, 0.01]", steps=60)
    out = tmp_path / "run"
    argv = [a for a in run_command(m, out) if a != "--no-progress"]
    env = {**os.environ, "COLUMNS": "100"}
    code, text = _pty_run(argv, env, until="[1/4]")
    assert code == 130, text
    assert "groups," in text and "% of steps" in text  # the live block was drawn
    after = text.split("^C", 1)[-1]
    visible = [line for line in re.sub(r"\x1b\[\d*[A-Za-z]", "", after).splitlines() if line]
    assert visible == [
        "qbench: interrupted; finished jobs are kept, run the same command to resume"
    ]
    assert "Traceback" not in text and "leaked" not in text
    assert len(list((out / "rows").glob("*.json"))) >= 1  # the finished job is kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_qbench_process_leaves_no_warning_and_no_worker(tmp_path):
    m = tiny(tmp_path, '["noise", "ste"]', lambdas="[0.001, 0.01]", steps=60)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        run_command(m, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:  # until the first row landed
        lines.append(line)
        if line.startswith("[1/4]"):
            break
    children = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)  # the qbench process only, not its group
    proc.wait()
    # the pipe ends when the last process holding it (the resource tracker) is gone
    rest = proc.stdout.read()
    text = "".join(lines) + rest
    assert "leaked" not in text and "resource_tracker" not in text, text
    assert not [line for line in rest.splitlines() if line.strip()], rest
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.1)
    assert children and not [c for c in children if _alive(c)]  # the workers died with it


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux's /proc)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_status_sees_a_training_at_its_first_step(tmp_path):
    """The group's running record is written at the first step, not 30 s later."""
    from qbench.results import RunDir
    from qbench.run.worker import _Heartbeat

    run_dir = RunDir(tmp_path)
    run_dir.ensure()
    seen = []
    beat = _Heartbeat(run_dir, "abcdef012345", 100, lambda step, stats: seen.append(step))
    beat.update(1, {"loss": 1.0, "bpp": 0.5})
    assert run_dir.running()["abcdef012345"]["step"] == 1 and seen == [1]
    beat.update(2, {"loss": 1.0, "bpp": 0.5})  # within 30 s: the record stays, progress goes on
    assert run_dir.running()["abcdef012345"]["step"] == 1 and seen == [1, 2]
