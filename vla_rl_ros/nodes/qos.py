"""Quality-of-service profiles by purpose, shared by every node of the graph.

- Visualisation (per-env camera images, joint states): best effort, shallow; a slow viewer must
  never slow the control loop.
- Batches and commands (observations, actions, step rewards, episode results, task
  assignments): reliable; a lost batch would stall or bias training.
- Trajectory-bag notices: reliable and transient-local with a short history, so a learner that
  subscribes late is told at once that bags are waiting (it then takes every bag on disk).
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

BAG_NOTICES = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Transient-local keep-last 10: the learner loads its model for seconds (minutes at 7B) while the
bridge and policy already roll out. A notice only says when to look: the learner trains on every
complete bag of ``graph.bag_dir`` it has not trained on, so notices beyond the last ten, or lost,
lose no data. Volatile subscribers (viewers, tests) stay compatible."""
