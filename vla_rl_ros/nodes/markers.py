"""Builders of rviz markers (visualization_msgs) for the end-effector path, targets, task and progress.

Pure functions from plain values to messages, so bridges (real or simulated) share them and
tests check them without a graph. Marker namespaces and ids are stable, so rviz replaces a
marker in place instead of piling copies up.
"""
from __future__ import annotations

from typing import Sequence

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

GREEN = ColorRGBA(r=0.1, g=0.8, b=0.2, a=1.0)
RED = ColorRGBA(r=0.9, g=0.1, b=0.1, a=1.0)
BLUE = ColorRGBA(r=0.2, g=0.4, b=1.0, a=1.0)
WHITE = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
GREY = ColorRGBA(r=0.6, g=0.6, b=0.6, a=0.6)


def _point(xyz: Sequence[float]) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _marker(header: Header, namespace: str, marker_type: int, color: ColorRGBA) -> Marker:
    marker = Marker(header=header, ns=namespace, id=0, type=marker_type, action=Marker.ADD, color=color)
    marker.pose.orientation.w = 1.0
    marker.lifetime = Duration(sec=0)  # forever: replaced by the next update
    return marker


def eef_path_marker(header: Header, positions: Sequence[Sequence[float]], width_m: float = 0.005) -> Marker:
    """LINE_STRIP through the recent end-effector positions (oldest first)."""
    marker = _marker(header, "eef_path", Marker.LINE_STRIP, BLUE)
    marker.scale.x = width_m
    marker.points = [_point(p) for p in positions]
    return marker


def target_marker(header: Header, position: Sequence[float], stopped: bool, size_m: float = 0.03) -> Marker:
    """SPHERE at the commanded target: green while moving, red while stopped."""
    marker = _marker(header, "safe_target", Marker.SPHERE, RED if stopped else GREEN)
    marker.pose.position = _point(position)
    marker.scale.x = marker.scale.y = marker.scale.z = size_m
    return marker


def text_marker(header: Header, namespace: str, text: str, position: Sequence[float],
                color: ColorRGBA = WHITE, height_m: float = 0.04) -> Marker:
    """TEXT_VIEW_FACING label (task instruction, PRM progress, safety state)."""
    marker = _marker(header, namespace, Marker.TEXT_VIEW_FACING, color)
    marker.pose.position = _point(position)
    marker.scale.z = height_m
    marker.text = text
    return marker


def workspace_marker(header: Header, lower: Sequence[float], upper: Sequence[float]) -> Marker:
    """LINE_LIST of the 12 edges of the safety workspace box."""
    marker = _marker(header, "workspace", Marker.LINE_LIST, GREY)
    marker.scale.x = 0.003
    corners = [(x, y, z) for x in (lower[0], upper[0]) for y in (lower[1], upper[1])
               for z in (lower[2], upper[2])]
    for i, a in enumerate(corners):
        for b in corners[i + 1:]:
            if sum(u != v for u, v in zip(a, b)) == 1:  # differ on exactly one axis: an edge
                marker.points += [_point(a), _point(b)]
    return marker


def progress_text(progress: float | None, policy_version: int | None = None) -> str:
    """Label of the PRM progress score, e.g. 'progress 0.42 (policy v3)'."""
    text = "progress n/a" if progress is None else f"progress {progress:.2f}"
    return text if policy_version is None else f"{text} (policy v{policy_version})"


def bridge_markers(header: Header, path: Sequence[Sequence[float]], target: Sequence[float] | None,
                   stopped: bool, instruction: str, progress: float | None, status: str,
                   workspace: tuple[Sequence[float], Sequence[float]] | None = None,
                   policy_version: int | None = None) -> MarkerArray:
    """Every marker of one bridge: path, target, workspace box, task, PRM progress and safety status."""
    array = MarkerArray()
    anchor = list(path[-1]) if path else [0.0, 0.0, 0.0]
    if path:
        array.markers.append(eef_path_marker(header, path))
    if target is not None:
        array.markers.append(target_marker(header, target, stopped))
    if workspace is not None:
        array.markers.append(workspace_marker(header, *workspace))
    above = [anchor[0], anchor[1], anchor[2] + 0.25]
    array.markers.append(text_marker(header, "task", instruction or "(no instruction)", above))
    array.markers.append(text_marker(header, "prm_progress", progress_text(progress, policy_version),
                                     [above[0], above[1], above[2] - 0.06], GREEN))
    array.markers.append(text_marker(header, "safety", status, [above[0], above[1], above[2] - 0.12],
                                     RED if stopped else WHITE, height_m=0.03))
    return array
