"""Counted, logged rejections: how a node turns bad input into a number instead of a crash.

Nodes validate what they consume (``nodes/convert.py``, the core's loaders) and report a bad
message or file through :class:`Rejections`: a warning that says what was refused and why, and a
counter per kind. :meth:`Rejections.guard` wraps a subscription or timer callback as the last line:
rclpy re-raises a callback's exception out of spin, which ends the process (and, for a required
node, the whole graph), so an exception that no check foresaw is logged with its traceback and
counted as ``<kind>_errors`` instead, and the node goes on with the next message.

The counts also go out on ``/diagnostics`` once a second (one status per node, named
``<node>: rejected inputs``; WARN while new rejections arrive, OK otherwise), so a monitor
(rqt_robot_monitor, a fleet dashboard) sees a node refusing input without reading its log. The
Franka bridge reports them in its own status instead (nodes/safety_io.py).
"""
from __future__ import annotations

import re
import time
import traceback
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from std_msgs.msg import Header

from vla_rl_ros.nodes import qos


class Rejections:
    """Counters of refused inputs of one node, by kind (``observations``, ``bags``, ...)."""

    THROTTLE_S = 1.0
    """A flood of one bad message must not flood the log: each reason is logged at most once a second."""

    def __init__(self, node: Node, diagnostics: bool = True) -> None:
        self.node = node
        self.counts: dict[str, int] = {}
        self._last_logged: dict[tuple[str, str], float] = {}
        self._reported_total = 0
        if diagnostics:
            self._diagnostics = node.create_publisher(DiagnosticArray, "/diagnostics", qos.COMMAND)
            node.create_timer(1.0, self.publish_diagnostics)

    def __call__(self, kind: str, why: str) -> int:
        """Count and log one refused ``kind`` input; returns how many of that kind so far."""
        count = self.counts[kind] = self.counts.get(kind, 0) + 1
        # Throttled per reason (the text without its numbers), not per call site: a flood of one bad
        # message must not hide the first rejection of another kind of bad message (rclpy's own
        # throttle is per call site, and every rejection goes through this line).
        reason = (kind, re.sub(r"\d+", "#", why))
        now = time.monotonic()
        if len(self._last_logged) > 1024:  # reasons quoting names a sender chooses must not grow it forever
            self._last_logged.clear()
        if now - self._last_logged.get(reason, -self.THROTTLE_S) >= self.THROTTLE_S:
            self._last_logged[reason] = now
            self.node.get_logger().warning(f"rejected {kind} ({count} so far): {why}")
        return count

    def guard(self, kind: str, callback: Callable, on_error: Callable[[Exception], None] | None = None):
        """``callback`` that counts and logs any exception as ``<kind>_errors`` instead of raising.

        ``on_error(exception)`` runs after the count (the Franka bridge stops the arm there).
        """
        def guarded(*args):
            try:
                return callback(*args)
            except Exception as err:  # the node must outlive any single message
                count = self.counts[f"{kind}_errors"] = self.counts.get(f"{kind}_errors", 0) + 1
                self.node.get_logger().error(
                    f"{kind}: unexpected {type(err).__name__}: {err} ({count} so far); the node goes on\n"
                    f"{traceback.format_exc(limit=6)}", throttle_duration_sec=1.0)
                if on_error is not None:
                    on_error(err)
                return None
        return guarded

    def publish_diagnostics(self) -> None:
        """One ``/diagnostics`` status with every count (WARN if any arrived since the last one)."""
        total = sum(self.counts.values())
        fresh = total - self._reported_total
        self._reported_total = total
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if fresh else DiagnosticStatus.OK,
            name=f"{self.node.get_name()}: rejected inputs", hardware_id=self.node.get_fully_qualified_name(),
            message=f"{fresh} rejected in the last second, {total} in all" if total else "none rejected",
            values=[KeyValue(key=f"rejected_{k}", value=str(v)) for k, v in sorted(self.counts.items())])
        self._diagnostics.publish(DiagnosticArray(header=Header(stamp=self.node.get_clock().now().to_msg()),
                                                  status=[status]))

    def summary(self, prefix: str) -> str:
        """``prefix/rejected_<kind>=<n>`` for every kind counted, for a node's periodic log line."""
        return " ".join(f"{prefix}/rejected_{k}={v}" for k, v in sorted(self.counts.items()))
