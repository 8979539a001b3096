"""How every node stops (``vla_rl_ros.nodes.runner.run_node``), in a real child process.

The first SIGINT or SIGTERM lets the running callback finish and then shuts the node down
(``destroy_node`` runs: the recorder closes its bag there); a second signal interrupts a callback
that is taking too long. The child (this file run as a script) logs each stage to a file.
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_child(log_path: str, callback_s: float) -> None:
    """A node whose timer callback takes ``callback_s`` and whose destroy_node is logged."""
    from rclpy.node import Node

    from vla_rl_ros.nodes.runner import run_node

    def log(line: str) -> None:
        with open(log_path, "a") as handle:
            handle.write(line + "\n")

    class SlowNode(Node):
        def __init__(self) -> None:
            super().__init__("slow_callback")
            self.create_timer(0.05, self.work)

        def work(self) -> None:
            log("callback started")
            time.sleep(callback_s)
            log("callback finished")

        def destroy_node(self) -> None:
            log("destroyed")
            super().destroy_node()
    sys.exit(run_node(SlowNode))


def start(tmp_path: Path, callback_s: float) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "stages.log"
    child = subprocess.Popen([sys.executable, __file__, "child", str(log), str(callback_s)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while "callback started" not in (log.read_text() if log.exists() else ""):
        assert child.poll() is None, "the child died before its first callback"
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the child's first callback did not start within 60 s")
        time.sleep(0.02)
    return child, log


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_lets_the_callback_finish_then_destroys_the_node(tmp_path, first):
    child, log = start(tmp_path, callback_s=1.5)
    child.send_signal(first)
    assert child.wait(timeout=30) == 0
    stages = log.read_text().splitlines()
    # The callback that was running is not cut short, and no new one starts after the request.
    assert stages == ["callback started", "callback finished", "destroyed"], stages


def test_second_signal_interrupts_a_long_callback(tmp_path):
    child, log = start(tmp_path, callback_s=120.0)
    child.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert child.poll() is None, "a long callback is allowed to finish after one signal"
    asked = time.monotonic()
    child.send_signal(signal.SIGTERM)  # what vla-rl launch sends after its grace period
    assert child.wait(timeout=30) == 0
    assert time.monotonic() - asked < 10.0
    assert log.read_text().splitlines() == ["callback started", "destroyed"]


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    sys.path.insert(0, str(ROOT))
    run_child(sys.argv[2], float(sys.argv[3]))
