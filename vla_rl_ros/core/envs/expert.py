"""A scripted pick-and-place expert for LIBERO that reads object poses from the simulator.

The plan: hover above a grasp point, descend, close the gripper, lift, carry over the target,
lower until the object's bottom is just above the target's top, open, retreat. Grasp planning
is what makes it reliable: the object is measured from its collision geometry, narrow objects
are pinched across their short axis, wide ones (bowls, plates) by the rim, the fingers are
turned to match, and among candidate grasp points the one with the most clearance from other
objects wins. A dropped object sends it back to planning (bounded retries).

Works for tasks whose BDDL names two objects of interest (object, target): the pick-and-place
tasks of LIBERO-Spatial, LIBERO-Object and most of LIBERO-Goal.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from vla_rl_ros.core.config_io import check

HOVER, DESCEND, CLOSE, LIFT, CARRY, LOWER, OPEN, RETREAT = range(8)
OPEN_GRIPPER, CLOSE_GRIPPER = -1.0, 1.0
CUBE_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)


@dataclass
class ExpertConfig:
    """Tuning of the scripted expert (defaults measured on LIBERO-Spatial/Object)."""

    max_gripper_opening: float = 0.075
    """Objects narrower than this (m) are pinched across their short axis; wider ones by the rim."""
    min_grasp_height: float = 0.012
    """Lowest grip point above the object's bottom (m): fingertips extend below it."""
    max_retries: int = 2
    """Replans after a drop before giving up."""
    position_gain: float = 0.05
    """Position error (m) that maps to a full-scale action."""
    rotation_gain: float = 0.5
    """Rotation error (rad) that maps to a full-scale action."""
    phase_timeout: int = 150
    """Steps after which a phase is abandoned and the next one starts."""
    stall_steps: int = 8
    """A moving phase ends when the hand got less than ``stall_distance`` closer to its goal over
    this many steps (the goal is out of reach, or blocked)."""
    stall_distance: float = 0.002
    """Progress (m) over ``stall_steps`` below which the goal counts as unreachable."""
    integral_gain: float = 0.3
    """Weight of the summed position error (per step) added to the error: removes steady offsets."""

    def __post_init__(self) -> None:
        check(0.01 < self.max_gripper_opening < 0.2, "expert.max_gripper_opening",
              self.max_gripper_opening, "between 0.01 and 0.2 m")
        check(self.max_retries >= 0, "expert.max_retries", self.max_retries, "must be >= 0")
        check(self.position_gain > 0, "expert.position_gain", self.position_gain, "must be > 0")
        check(self.rotation_gain > 0, "expert.rotation_gain", self.rotation_gain, "must be > 0")
        check(self.phase_timeout > 0, "expert.phase_timeout", self.phase_timeout, "must be > 0")
        check(self.stall_steps > 1, "expert.stall_steps", self.stall_steps, "must be > 1")
        check(self.stall_distance > 0, "expert.stall_distance", self.stall_distance, "must be > 0")
        check(self.integral_gain >= 0, "expert.integral_gain", self.integral_gain, "must be >= 0")


class ExpertUnsupported(ValueError):
    """The task is not a pick-and-place task the expert knows how to solve."""


def _mujoco_handles(sim):
    return sim.sim.model._model, sim.sim.data._data


def object_corner_points(sim, body_prefix: str) -> np.ndarray:
    """World-frame corners of the collision geoms' bounding boxes of bodies named ``body_prefix*``."""
    import mujoco
    model, data = _mujoco_handles(sim)
    points = []
    for geom in range(model.ngeom):
        body = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, model.geom_bodyid[geom]) or ""
        collides = model.geom_contype[geom] != 0 or model.geom_conaffinity[geom] != 0
        if not body.startswith(body_prefix) or not collides:
            continue
        centre, half = model.geom_aabb[geom, :3], model.geom_aabb[geom, 3:]
        rotation = data.geom_xmat[geom].reshape(3, 3)
        points.append(data.geom_xpos[geom] + (centre + CUBE_CORNERS * half) @ rotation.T)
    if not points:
        raise ExpertUnsupported(f"no collision geometry found for object {body_prefix!r}")
    return np.concatenate(points)


def mesh_top_near(sim, body_prefix: str, xy: np.ndarray, radius: float = 0.02) -> float | None:
    """Highest mesh vertex of ``body_prefix*`` within ``radius`` of ``xy`` (the local rim height)."""
    import mujoco
    model, data = _mujoco_handles(sim)
    best = None
    for geom in range(model.ngeom):
        body = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, model.geom_bodyid[geom]) or ""
        if not body.startswith(body_prefix) or model.geom_type[geom] != mujoco.mjtGeom.mjGEOM_MESH:
            continue
        mesh = model.geom_dataid[geom]
        start, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
        vertices = model.mesh_vert[start:start + count] @ data.geom_xmat[geom].reshape(3, 3).T
        vertices = vertices + data.geom_xpos[geom]
        near = vertices[np.linalg.norm(vertices[:, :2] - xy, axis=1) < radius]
        if len(near):
            best = near[:, 2].max() if best is None else max(best, near[:, 2].max())
    return best


def footprint_clearance(centre: np.ndarray, axis: np.ndarray, half_length: float, half_width: float,
                        box_low: np.ndarray, box_high: np.ndarray) -> float:
    """Signed distance between the gripper's oriented footprint and an xy box.

    The gap when apart, minus the deepest penetration when they overlap (so that less overlap
    still ranks higher).
    """
    across = np.array([-axis[1], axis[0]])
    gap, depth = np.inf, 0.0
    for along in np.linspace(-1, 1, 9):
        for side in np.linspace(-1, 1, 5):
            point = centre + along * half_length * axis + side * half_width * across
            outside = np.maximum(np.maximum(box_low - point, point - box_high), 0)
            if np.any(outside > 0):
                gap = min(gap, float(np.linalg.norm(outside)))
            else:
                depth = max(depth, float(np.min(np.minimum(point - box_low, box_high - point))))
    return -depth if depth > 0 else gap


class ScriptedExpert:
    """Pick-and-place controller producing 7-dof OSC_POSE delta actions in [-1, 1].

    Usage: ``expert.reset(env)`` after ``env.reset(...)``, then ``expert.act(env)`` each step,
    where ``env`` is a :class:`~vla_rl_ros.core.envs.libero_env.LiberoEnv` (its ``sim`` and
    ``raw_obs`` are read). ``gave_up`` turns true after too many drops.
    """

    def __init__(self, config: ExpertConfig | None = None) -> None:
        """Create an expert; it holds no simulator until :meth:`reset`."""
        self.config = config or ExpertConfig()
        self.sim = None

    def reset(self, env) -> None:
        """Read the task's object and target from the simulator and start a fresh plan."""
        sim = env.sim
        of_interest = list(sim.env.obj_of_interest)
        if len(of_interest) != 2:
            raise ExpertUnsupported(f"task objects of interest {of_interest}: expected (object, target)")
        self.sim = sim
        self.obj, self.target = of_interest
        self.others = [name for name in sim.env.objects_dict if name not in of_interest]
        self.reference_rotation = None
        self.phase, self.phase_steps, self.retries = HOVER, 0, 0
        self.plan: dict | None = None
        self.trail: deque = deque(maxlen=self.config.stall_steps)
        self.integral = np.zeros(3)
        self.fingers: np.ndarray | None = None

    @property
    def gave_up(self) -> bool:
        """True after more drops than ``max_retries``: the episode should be abandoned."""
        return self.retries > self.config.max_retries

    def _target_region(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre of the target region and a point at its top (to lower the object onto)."""
        import mujoco
        model, data = _mujoco_handles(self.sim)
        site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, self.target)
        if site < 0:  # the target is an object (e.g. a plate), not a region site
            points = object_corner_points(self.sim, self.target)
            return (points.min(0) + points.max(0)) / 2, points.max(0)
        centre = data.site_xpos[site].copy()
        names = list(self.sim.env.objects_dict) + list(getattr(self.sim.env, "fixtures_dict", {}))
        owners = [name for name in names if self.target.startswith(name)]
        top = centre[2]
        if owners:  # a region inside a basket or on a cabinet: clear the owner's walls near it
            points = object_corner_points(self.sim, owners[0])
            near = points[np.linalg.norm(points[:, :2] - centre[:2], axis=1) < 0.08]
            if len(near):
                top = max(top, near[:, 2].max())
        return centre, np.r_[centre[:2], top]

    def _plan_grasp(self) -> None:
        points = object_corner_points(self.sim, self.obj)
        low, high = points.min(0), points.max(0)
        centre = (points[:, :2].min(0) + points[:, :2].max(0)) / 2
        offsets = points[:, :2] - centre
        _, axes = np.linalg.eigh(offsets.T @ offsets)
        minor, major = axes[:, 0], axes[:, 1]
        minor_extent, major_extent = np.ptp(offsets @ minor), np.ptp(offsets @ major)
        candidates = []  # (xy, finger axis, grasp height, penalty)
        if minor_extent < self.config.max_gripper_opening:
            height = min(max(low[2] + 0.5 * (high[2] - low[2]), low[2] + 0.015), high[2] - 0.01)
            # Flat objects: the fingertips reach below the grip point and would hit the table.
            height = max(height, low[2] + self.config.min_grasp_height)
            for shift in np.linspace(-0.3, 0.3, 5):
                xy = centre + shift * max(major_extent - 0.03, 0) * major
                candidates.append((xy, minor, height, abs(shift)))
        else:
            radius = min(minor_extent, major_extent) / 2
            for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
                direction = np.array([np.cos(angle), np.sin(angle)])
                xy = centre + (radius - 0.012) * direction
                rim = mesh_top_near(self.sim, self.obj, xy)
                candidates.append((xy, direction, (high[2] if rim is None else rim) - 0.012, 0.0))
        other_points = [object_corner_points(self.sim, name) for name in self.others]
        best, best_score = candidates[0], -np.inf
        for xy, finger_axis, height, penalty in candidates:
            clearance = np.inf
            for other in other_points:
                if other[:, 2].max() < height + 0.02:
                    continue  # too low to hit the fingers
                clearance = min(clearance, footprint_clearance(xy, finger_axis, 0.11, 0.035,
                                                               other[:, :2].min(0), other[:, :2].max(0)))
            score = min(clearance, 0.05) - 0.01 * penalty
            if score > best_score:
                best, best_score = (xy, finger_axis, height, penalty), score
        xy, finger_axis, height, _ = best
        # The fingers close along world -y in the reference pose; yaw them onto the finger axis.
        yaw = np.arctan2(finger_axis[1], finger_axis[0]) - np.arctan2(-1.0, 0.0)
        yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2
        self.plan = dict(xy=xy, z=height, yaw=yaw, object_height=high[2] - low[2], floor=low[2],
                         carry_bottom=self._carry_bottom(low, high))

    def _carry_bottom(self, low: np.ndarray, high: np.ndarray) -> float:
        """Height for the object's bottom on the way to the target: clear of what lies on the path.

        Only obstacles (other objects, fixtures such as the cabinet, the target itself) whose
        footprint comes within reach of the object's straight path count, so that an object is
        not lifted 30 cm for a cabinet it has already left behind: each centimetre of height
        costs a step up and a step down of a 220-step episode.
        """
        start = (low[:2] + high[:2]) / 2
        target_centre, target_top = self._target_region()
        end = target_centre[:2]
        margin = (high[:2] - low[:2]).max() / 2 + 0.03
        path = start + np.linspace(0, 1, 25)[:, None] * (end - start)
        names = self.others + [self.target] + list(getattr(self.sim.env, "fixtures_dict", {}))
        clear = max(low[2], target_top[2])
        for name in names:
            try:
                points = object_corner_points(self.sim, name)
            except ExpertUnsupported:  # no collision geometry: nothing to hit
                continue
            box_low, box_high = points[:, :2].min(0) - margin, points[:, :2].max(0) + margin
            if np.any(np.all((path >= box_low) & (path <= box_high), axis=1)):
                clear = max(clear, points[:, 2].max())
        return clear + 0.05

    def act(self, env) -> np.ndarray:
        """Next action (float32 [7]) for the current simulator state."""
        from robosuite.utils import transform_utils as tf
        raw = env.raw_obs
        eef = np.asarray(raw["robot0_eef_pos"], dtype=float)
        rotation = tf.quat2mat(raw["robot0_eef_quat"])
        if self.reference_rotation is None:
            self.reference_rotation = rotation.copy()
        if self.plan is None or (self.phase == HOVER and self.phase_steps == 0):
            self._plan_grasp()
        plan, phase = self.plan, self.phase
        points = object_corner_points(self.sim, self.obj)
        low, high = points.min(0), points.max(0)
        object_centre = (low + high) / 2
        target_centre, target_top = self._target_region()
        # Steer the object's bottom, not the hand: a bowl held by its rim tilts several centimetres.
        carry_z = eef[2] + plan["carry_bottom"] - low[2]
        over_target = eef[:2] + (target_centre[:2] - object_centre[:2])
        gripper = CLOSE_GRIPPER if phase in (CLOSE, LIFT, CARRY, LOWER) else OPEN_GRIPPER
        goal = {HOVER: np.r_[plan["xy"], max(plan["z"] + 0.07, high[2] + 0.05)],
                DESCEND: np.r_[plan["xy"], plan["z"]],
                CLOSE: np.r_[plan["xy"], plan["z"]],
                LIFT: np.r_[eef[:2], carry_z],
                CARRY: np.r_[over_target, carry_z],
                LOWER: np.r_[over_target, eef[2] - (low[2] - (target_top[2] + 0.02))],
                OPEN: eef}.get(phase, np.r_[eef[:2], carry_z])
        error = goal - eef
        self.phase_steps += 1
        if self._advance(phase, error, np.asarray(raw["robot0_gripper_qpos"], dtype=float)):
            self._next_phase(min(phase + 1, RETREAT))
        if phase in (CARRY, LOWER) and eef[2] - high[2] > 0.06:  # fingers far above the object: dropped
            self._next_phase(HOVER)
            self.retries += 1
        gain = np.full(3, self.config.position_gain)
        if phase in (DESCEND, LOWER):
            gain[2] *= 1.6  # brake earlier onto the object or the target: the arm overshoots at full speed
        if phase not in (CLOSE, OPEN):
            # Integral action near the goal: a held bowl's weight leaves the OSC centimetres short.
            self.integral += np.where(np.abs(error) < 0.03, error, 0.0)
        move = np.clip((error + self.config.integral_gain * self.integral) / gain, -1, 1)
        if phase < RETREAT:
            yaw_rotation = tf.quat2mat(tf.axisangle2quat(np.array([0.0, 0.0, plan["yaw"]])))
            wanted = yaw_rotation @ self.reference_rotation
        else:
            wanted = rotation
        turn = np.clip(tf.quat2axisangle(tf.mat2quat(wanted @ rotation.T)) / self.config.rotation_gain, -1, 1)
        return np.r_[move, turn, gripper].astype(np.float32)

    def _advance(self, phase: int, error: np.ndarray, fingers: np.ndarray) -> bool:
        """Whether ``phase`` is done: goal reached, fingers settled, or the hand stalled.

        A stall means the goal is out of the arm's reach (objects on the cabinet or in its top
        drawer) or blocked (a finger on a bowl's rim, the object resting on the target); waiting
        for the phase timeout there cost more than the whole episode cap.
        """
        fingers_still = self.fingers is not None and np.abs(fingers - self.fingers).max() < 5e-4
        self.fingers = fingers
        if phase == CLOSE:  # the grip holds once the fingers stop on the object
            return self.phase_steps > 12 or (self.phase_steps > 5 and fingers_still)
        if phase == OPEN:
            return self.phase_steps > 12
        if self.phase_steps > self.config.phase_timeout:
            return True
        distance = float(np.linalg.norm(error))
        self.trail.append(distance)
        stalled = (len(self.trail) == self.trail.maxlen
                   and self.trail[0] - distance < self.config.stall_distance)
        return stalled or distance < (0.008 if phase == DESCEND else 0.015)

    def _next_phase(self, phase: int) -> None:
        self.phase, self.phase_steps = phase, 0
        self.trail.clear()
        self.integral = np.zeros(3)
