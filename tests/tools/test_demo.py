"""`make demo` as a new user runs it: the service on the demo bundle, one 4K frame."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.local import free_port
from tools.demo import main, rule_text

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_demo_prints_a_verdict_the_rule_behind_it_and_writes_the_overlay(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--frames", "1", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "frame 0 (3840x2160, bed learned" in out and "truly in it: spray_can" in out
    assert any(f"verdict {v}" in out for v in ("CLEAN", "INSPECT", "REJECT"))
    assert "an instance needs score >= " in out
    assert (tmp_path / "frame_0_overlay.jpg").stat().st_size > 10_000


def test_the_rule_reads_without_a_minimum_score():
    t = {"min_area_px": 64, "min_score": None, "reject_score": 0.8}
    assert rule_text(t) == "an instance needs area >= 64 px; reject from 0.800"


def test_a_bundle_that_is_not_one_is_named_and_nothing_starts(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 1
    assert f"demo: {tmp_path / 'nope'}: not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_asked_to_serve_the_demo_keeps_the_dashboard_up_until_ctrl_c(tmp_path, stop):
    port = free_port()
    # -X faulthandler: a demo that does not stop is made to print every thread's stack
    cmd = [sys.executable, "-X", "faulthandler", "-m", "tools.demo", "--out", str(tmp_path)]
    cmd += ["--frames", "1", "--serve", "--port", str(port)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        # as a shell starts a background job: SIGINT ignored, which Python then keeps
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        lines = []
        while not any("serving until Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"the demo ended: {''.join(lines)}"
            lines.append(line)
        assert f"http://127.0.0.1:{port}/dashboard" in lines[-1]
        page = httpx.get(f"http://127.0.0.1:{port}/dashboard")
        assert page.status_code == 200 and "scrapscan dashboard" in page.text
        feed = httpx.get(f"http://127.0.0.1:{port}/v1/results").json()
        assert len(feed["items"]) == 1  # the demo's frame is in the feed
        proc.send_signal(stop)
        try:  # the service stops within its grace (10 s) and the join of its thread (30 s)
            assert proc.wait(timeout=60) == 0
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # the stacks go to the captured stderr
            proc.wait(timeout=10)
            pytest.fail("the demo did not stop within 60 s of the signal (stacks in stderr)")
    finally:
        proc.kill()
        proc.wait()
