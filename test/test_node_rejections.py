"""Counted rejections (nodes/rejections.py): every bad input is counted; the log is throttled per
reason, so a flood of one bad message cannot hide the first rejection of another."""
import time

import rclpy
import pytest
from rclpy.node import Node

from vla_rl_ros.nodes.rejections import Rejections


class RecordingLogger:
    """The part of rclpy's logger a node's rejections use, keeping what was logged."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str, **_) -> None:
        self.lines.append(message)

    def error(self, message: str, **_) -> None:
        self.lines.append(message)


class LoggedNode(Node):
    """A real rclpy node whose warnings are recorded."""

    def __init__(self, context) -> None:
        super().__init__("rejecting_node", context=context)
        self.recorded = RecordingLogger()

    def get_logger(self):
        return self.recorded


@pytest.fixture
def node():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = LoggedNode(context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_a_flood_of_one_reason_does_not_hide_another(node):
    rejections = Rejections(node)
    for i in range(50):
        rejections("task_assignments", f"env {i % 2} already has 4 queued; the oldest is dropped")
    rejections("task_assignments", "task assignment: unknown task id 7, known [0, 1]")
    assert rejections.counts["task_assignments"] == 51
    lines = node.recorded.lines
    assert len(lines) == 2, lines  # one line for the flood (numbers differ, the reason does not), one for 7
    assert "unknown task id 7" in lines[1] and "(51 so far)" in lines[1]


def test_the_same_reason_is_logged_again_after_the_throttle(node, monkeypatch):
    rejections = Rejections(node)
    clock = [100.0]
    monkeypatch.setattr("vla_rl_ros.nodes.rejections.time.monotonic", lambda: clock[0])
    rejections("observations", "size 8x8, expected 32x32")
    clock[0] += 0.5
    rejections("observations", "size 9x9, expected 32x32")
    clock[0] += Rejections.THROTTLE_S
    rejections("observations", "size 10x10, expected 32x32")
    logged = [line.split(": ", 1)[1] for line in node.recorded.lines]
    assert logged == ["size 8x8, expected 32x32", "size 10x10, expected 32x32"]
    assert rejections.summary("policy") == "policy/rejected_observations=3"


def test_a_callback_that_raises_is_counted_and_the_node_goes_on(node):
    rejections = Rejections(node)
    stopped = []
    guarded = rejections.guard("observations", lambda msg: msg["missing"], on_error=stopped.append)
    assert guarded({}) is None and guarded({}) is None
    assert rejections.counts["observations_errors"] == 2
    assert len(stopped) == 2 and isinstance(stopped[0], KeyError)
    assert "unexpected KeyError" in node.recorded.lines[0]


def test_counts_go_out_on_diagnostics(monkeypatch):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import SingleThreadedExecutor

    from dds_domains import isolate_dds
    from vla_rl_ros.nodes import qos
    isolate_dds(monkeypatch)
    context = rclpy.Context()
    rclpy.init(context=context)
    node, monitor = LoggedNode(context), Node("monitor", context=context)
    executor = SingleThreadedExecutor(context=context)
    for each in (node, monitor):
        executor.add_node(each)
    seen = []
    monitor.create_subscription(DiagnosticArray, "/diagnostics", lambda m: seen.extend(m.status), qos.COMMAND)
    try:
        rejections = Rejections(node)
        rejections("bag_notices", "outside graph.bag_dir")
        rejections("bag_notices", "outside graph.bag_dir")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(s.level == DiagnosticStatus.WARN for s in seen):
            executor.spin_once(timeout_sec=0.1)
        warned = next(s for s in seen if s.level == DiagnosticStatus.WARN)
        assert warned.name == "rejecting_node: rejected inputs"
        assert {kv.key: kv.value for kv in warned.values} == {"rejected_bag_notices": "2"}
        quiet_from = len(seen)  # no new rejection: the next status is OK, the count stays
        while time.monotonic() < deadline and len(seen) == quiet_from:
            executor.spin_once(timeout_sec=0.1)
        assert seen[quiet_from].level == DiagnosticStatus.OK and "2 in all" in seen[quiet_from].message
    finally:
        executor.shutdown()
        rclpy.shutdown(context=context)
