"""Quality-of-service profiles by purpose, shared by every node of the graph.

- Visualisation (per-env camera images, joint states): best effort, shallow; a slow viewer must
  never slow the control loop.
- Batches and commands (observations, actions, step rewards, episode results, task
  assignments, trajectory-bag notices): reliable; a lost batch would stall or bias training.
- Current policy version: reliable, transient-local, depth 1 ("latched"), so a policy node that
  (re)starts late still learns which adapters to load.
"""
from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

SENSOR_VIZ = qos_profile_sensor_data
"""Best-effort, keep-last 5: camera images and joint states for viewers."""

BATCH = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                   reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
"""Reliable, deep enough for several bridges' batches in flight."""

COMMAND = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                     reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
"""Reliable, shallow: task assignments and other commands."""

LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                     reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Transient-local depth 1: late joiners receive the last PolicyVersion."""
