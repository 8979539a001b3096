"""End-effector poses and the rotation arithmetic of the safety layer (ROS-free, numpy only).

Quaternions are (x, y, z, w), as geometry_msgs and robosuite write them. Split from
:mod:`vla_rl_ros.core.safety`, which re-exports every name here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def quat_from_axis_angle(rotvec: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation vector (axis * angle)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = rotvec / angle
    return np.concatenate([axis * math.sin(angle / 2.0), [math.cos(angle / 2.0)]])


def axis_angle_from_quat(quat: np.ndarray) -> np.ndarray:
    """Rotation vector of a quaternion (x, y, z, w), angle in [0, pi] (robosuite's quat2axisangle)."""
    quat = normalize_quat(quat)
    if quat[3] < 0:  # q and -q are the same rotation; pick the short way round
        quat = -quat
    sin_half = float(np.linalg.norm(quat[:3]))
    if sin_half < 1e-12:
        return np.zeros(3)
    angle = 2.0 * math.atan2(sin_half, float(quat[3]))
    return quat[:3] / sin_half * angle


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of quaternions (x, y, z, w): rotation b first, then a."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def normalize_quat(quat: np.ndarray) -> np.ndarray:
    """Unit quaternion; raises ValueError for a zero or non-finite one."""
    quat = np.asarray(quat, dtype=np.float64)
    norm = float(np.linalg.norm(quat))
    if not (math.isfinite(norm) and norm > 1e-9):
        raise ValueError(f"quaternion {quat.tolist()} cannot be normalised")
    return quat / norm


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in radians, in [0, pi], of the rotation taking unit quaternion ``a`` to ``b``."""
    return 2.0 * math.acos(min(1.0, abs(float(np.dot(a, b)))))


@dataclass
class EefPose:
    """End-effector pose in the robot base frame."""

    position: np.ndarray
    """float64 [3] metres."""
    quaternion: np.ndarray
    """float64 [4] (x, y, z, w), unit."""

    def is_finite(self) -> bool:
        """True when every component is a finite number."""
        return bool(np.isfinite(self.position).all() and np.isfinite(self.quaternion).all())


def proprio_from_state(pose: EefPose, finger_positions: np.ndarray) -> np.ndarray:
    """LIBERO-style proprio: eef position (3), eef axis-angle (3), gripper finger positions (2).

    A Franka reports both finger joints as positive distances from the centre; LIBERO's sim
    reports the second one negative. The second is negated here so that finger 0 minus finger 1
    is the opening on both (what a state-reading policy reads as "gripper N cm").
    """
    fingers = np.zeros(2) if finger_positions is None else np.asarray(finger_positions, np.float64)
    fingers = np.resize(fingers, 2) if fingers.size else np.zeros(2)
    fingers = np.array([abs(fingers[0]), -abs(fingers[1])])
    return np.concatenate([pose.position, axis_angle_from_quat(pose.quaternion), fingers]).astype(np.float32)
