"""The progress bar of `prepare`: silent when disabled; on a terminal one bar at a time, on stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from mt_tune.data.progress import Progress

PROGRAM = textwrap.dedent("""
    from mt_tune.data.progress import Progress

    with Progress({enabled}) as bar:
        bar.advance(1)  # before any stage: nothing to move
        bar.stage("scanning", 10)
        bar.advance(4)
        bar.stage("encoding", 8)  # replaces the scanning bar
        bar.advance(8)
    print("stdout untouched")
""")


def run(enabled: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "80", "TERM": "xterm"}  # rich takes stderr for a terminal
    env.pop("NO_COLOR", None)
    return subprocess.run([sys.executable, "-c", PROGRAM.format(enabled=enabled)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_a_disabled_bar_writes_nothing(capfd):
    with Progress(False) as bar:
        bar.advance(1)
        bar.stage("scanning", 10)
        bar.advance(4)
        bar.stage("spinning", None)
        bar.advance(1)
    assert capfd.readouterr() == ("", "")
    done = run(False)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "stdout untouched\n"


def test_an_enabled_bar_draws_on_stderr_one_stage_at_a_time():
    done = run(True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stdout untouched\n"
    frames = [line for line in re.split(r"[\r\n]", done.stderr) if "━" in line]  # each redraw of the bar
    last_frame = frames[-1]  # drawn when the bar stops, before it is erased (transient)
    assert "encoding" in last_frame and "8/8" in last_frame and "scanning" not in last_frame
