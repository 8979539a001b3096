"""Conversions between the ROS-free core's values and the package's messages, with validation.

Every ``*_from_msg`` function checks what arrives over DDS before the core sees it and raises
:class:`MessageError` with a reason that names the field and the bad value; nodes log the reason
and drop the message instead of crashing. Functions here never touch rclpy nodes, only message
objects, so they are tested without a graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Sequence

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from vla_rl_ros.core.envs.base import ACTION_DIM, Observation
from vla_rl_ros.core.envs.splits import LIBERO_INIT_STATES_PER_TASK, check_init_state_id
from vla_rl_ros.msg import ActionBatch, EpisodeResult, ObservationBatch

RGB8 = "rgb8"
MAX_ABS_ACTION = 10.0
"""Continuous actions beyond this magnitude are malformed (LIBERO actions live in [-1, 1])."""
MAX_CHUNK_SIZE = 36
"""Largest action chunk a message may carry (``policy.chunk_size``'s bound)."""
MAX_ABS_PROPRIO = 1000.0
"""Proprio values beyond this magnitude are malformed (positions in metres, angles in radians)."""
MAX_INSTRUCTION_CHARS = 1000
"""Longest instruction accepted (LIBERO's are under 100 characters; the prompt must fit the model)."""
MAX_REASON_CHARS = 1000
"""Longest abort reason an EpisodeResult may carry."""


def max_message_bytes(num_envs: int, image_size: int) -> int:
    """Largest serialised batch a recorder keeps.

    That is ``num_envs`` entries of two rgb8 frames of ``image_size`` (agentview and wrist) plus
    64 KiB each for the rest (instructions, proprio, headers). Anything bigger is not a message of
    this graph, and recording it verbatim would let one publisher fill the disk (a 4096x4096 frame
    is 48 MB).
    """
    return int(num_envs) * (2 * 3 * int(image_size) ** 2 + (64 << 10))


class MessageError(ValueError):
    """A received message is malformed; the text says which field and why."""


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise MessageError(reason)


# ----------------------------------------------------------------------------- images
def image_to_msg(image: np.ndarray, header: Header | None = None) -> Image:
    """sensor_msgs/Image (rgb8) of a uint8 [H, W, 3] array."""
    image = np.asarray(image)
    _require(image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3,
             f"image: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = RGB8
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(image).tobytes()
    return msg


def image_from_msg(msg: Image, expected_size: int | None = None, what: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] view of an rgb8 image message, after checking encoding, size and step."""
    _require(msg.encoding == RGB8, f"{what}: encoding {msg.encoding!r}, expected 'rgb8'")
    _require(msg.height > 0 and msg.width > 0, f"{what}: empty image {msg.width}x{msg.height}")
    if expected_size is not None:
        _require(msg.height == expected_size and msg.width == expected_size,
                 f"{what}: size {msg.width}x{msg.height}, expected {expected_size}x{expected_size}")
    _require(msg.step == msg.width * 3, f"{what}: step {msg.step}, expected width*3 = {msg.width * 3}")
    size = len(msg.data)
    _require(size == msg.step * msg.height,
             f"{what}: {size} data bytes, expected step*height = {msg.step * msg.height}")
    return np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.width, 3)


# ----------------------------------------------------------------------------- observations
@dataclass
class ObservationBatchData:
    """The content of one ObservationBatch in core terms."""

    bridge_id: str
    step_seq: int
    env_ids: list[int]
    episode_ids: list[int]
    observations: list[Observation]
    stamp: object = None
    """builtin_interfaces/Time of the header (kept so replies and recordings keep the timing)."""
    incarnation: int = 0
    """The bridge run that sent it (echoed in the reply)."""

    @property
    def images(self) -> np.ndarray:
        """uint8 [B, H, W, 3] stack of the agentview images, what batched decoding takes."""
        return np.stack([o.image for o in self.observations])

    @property
    def instructions(self) -> list[str]:
        """Instruction of every entry, in batch order."""
        return [o.instruction for o in self.observations]

    @property
    def proprio(self) -> np.ndarray:
        """float32 [B, D] proprio of every entry (D = 0 when the bridge sends none)."""
        return np.stack([np.asarray(o.proprio, np.float32).reshape(-1) for o in self.observations])


def observations_to_msg(bridge_id: str, step_seq: int, env_ids: Sequence[int],
                        episode_ids: Sequence[int], observations: Sequence[Observation],
                        header: Header | None = None, incarnation: int = 0) -> ObservationBatch:
    """Build the ObservationBatch of one step of ``observations`` (entry i belongs to ``env_ids[i]``).

    ``incarnation`` is the bridge run's id: step_seq and episode ids restart with it.
    """
    count = len(observations)
    _require(len(env_ids) == count and len(episode_ids) == count,
             f"observations: {count} entries but {len(env_ids)} env_ids, {len(episode_ids)} episode_ids")
    msg = ObservationBatch()
    if header is not None:
        msg.header = header
    msg.bridge_id = bridge_id
    msg.incarnation = int(incarnation)
    msg.step_seq = int(step_seq)
    msg.env_ids = [int(e) for e in env_ids]
    msg.episode_ids = [int(e) for e in episode_ids]
    msg.step_indices = [int(o.step) for o in observations]
    msg.task_ids = [int(o.task_id) for o in observations]
    msg.instructions = [o.instruction for o in observations]
    msg.images = [image_to_msg(o.image, header) for o in observations]
    if all(o.wrist_image is not None for o in observations) and count:
        msg.wrist_images = [image_to_msg(o.wrist_image, header) for o in observations]
    dims = {int(np.asarray(o.proprio).size) for o in observations}
    _require(len(dims) <= 1, f"observations: proprio lengths differ {sorted(dims)}")
    msg.proprio_dim = dims.pop() if dims else 0
    if count:
        msg.proprio = np.concatenate([np.asarray(o.proprio, np.float32).ravel() for o in observations])
    return msg


def observations_from_msg(msg: ObservationBatch, image_size: int | None = None,
                          known_task_ids: Collection[int] | None = None,
                          init_state_ids: Sequence[int] | None = None,
                          min_proprio_dim: int = 0) -> ObservationBatchData:
    """Validated core view of an ObservationBatch; raises MessageError naming the bad field.

    ``min_proprio_dim``: the reader needs at least this many proprio values per entry (a model
    that reads the robot state needs ``PROPRIO_DIM``).
    """
    count = len(msg.env_ids)
    _require(count > 0, "observations: empty batch (no env_ids)")
    for name in ("episode_ids", "step_indices", "task_ids", "instructions", "images"):
        _require(len(getattr(msg, name)) == count,
                 f"observations.{name}: {len(getattr(msg, name))} entries, expected {count} (env_ids)")
    _require(len(msg.wrist_images) in (0, count),
             f"observations.wrist_images: {len(msg.wrist_images)} entries, expected 0 or {count}")
    _require(len(set(msg.env_ids)) == count, f"observations.env_ids: duplicates in {list(msg.env_ids)}")
    _require(len(msg.proprio) == count * msg.proprio_dim,
             f"observations.proprio: {len(msg.proprio)} values, expected {count} x {msg.proprio_dim}")
    _require(msg.proprio_dim >= min_proprio_dim,
             f"observations.proprio_dim is {msg.proprio_dim}: the model reads the robot state and needs "
             f"{min_proprio_dim} (LIBERO layout)")
    proprio = np.asarray(msg.proprio, dtype=np.float32).reshape(count, msg.proprio_dim)
    _require(bool(np.isfinite(proprio).all()), "observations.proprio: contains NaN or inf")
    _require(not proprio.size or float(np.abs(proprio).max()) <= MAX_ABS_PROPRIO,
             f"observations.proprio: magnitude {float(np.abs(proprio).max()) if proprio.size else 0:.3g} "
             f"exceeds {MAX_ABS_PROPRIO:g}")
    if known_task_ids is not None:
        unknown = sorted({int(t) for t in msg.task_ids} - {int(t) for t in known_task_ids})
        _require(not unknown, f"observations.task_ids: unknown task id(s) {unknown}, "
                              f"known {sorted(known_task_ids)}")
    observations = []
    for i in range(count):
        _require(bool(msg.instructions[i].strip()), f"observations.instructions[{i}]: empty instruction")
        _require(len(msg.instructions[i]) <= MAX_INSTRUCTION_CHARS,
                 f"observations.instructions[{i}]: {len(msg.instructions[i])} characters, at most "
                 f"{MAX_INSTRUCTION_CHARS}")
        wrist = (image_from_msg(msg.wrist_images[i], image_size, f"observations.wrist_images[{i}]")
                 if msg.wrist_images else None)
        observations.append(Observation(
            image=image_from_msg(msg.images[i], image_size, f"observations.images[{i}]"),
            instruction=msg.instructions[i], proprio=proprio[i], task_id=int(msg.task_ids[i]),
            init_state_id=int(init_state_ids[i]) if init_state_ids is not None else -1,
            step=int(msg.step_indices[i]), wrist_image=wrist))
    return ObservationBatchData(bridge_id=msg.bridge_id, step_seq=int(msg.step_seq),
                                env_ids=[int(e) for e in msg.env_ids],
                                episode_ids=[int(e) for e in msg.episode_ids],
                                observations=observations, stamp=msg.header.stamp,
                                incarnation=int(msg.incarnation))


# ----------------------------------------------------------------------------- actions
@dataclass
class ActionBatchData:
    """The content of one ActionBatch in core terms: one chunk of K actions per entry."""

    bridge_id: str
    step_seq: int
    env_ids: list[int]
    policy_version: int
    tokens: np.ndarray
    """int64 [B, K * 7]: action k's tokens at columns 7k..7k+6 (the policy's layout)."""
    actions: np.ndarray
    """float32 [B, K, 7]: the chunks, executed one action per control step."""
    log_probs: np.ndarray
    """float32 [B, K * 7]."""
    values: np.ndarray
    """float32 [B]."""
    temperature: float = 0.0
    chunk_size: int = 1
    incarnation: int = 0
    extras: dict = field(default_factory=dict)


def actions_to_msg(bridge_id: str, step_seq: int, env_ids: Sequence[int], policy_version: int,
                   tokens: np.ndarray, actions: np.ndarray, log_probs: np.ndarray, values: np.ndarray,
                   temperature: float, header: Header | None = None, incarnation: int = 0) -> ActionBatch:
    """Build the ActionBatch replying to one ObservationBatch with the policy's decode outputs.

    ``actions`` is [B, K, 7] (a chunk per entry) or [B, 7] (K = 1); ``tokens`` and ``log_probs``
    hold K * 7 values per entry, in the same order; ``incarnation`` echoes the batch's.
    """
    count = len(env_ids)
    actions = np.asarray(actions, np.float32)
    if actions.ndim == 2:
        actions = actions[:, None, :]
    _require(actions.ndim == 3 and actions.shape[0] == count and actions.shape[2] == ACTION_DIM,
             f"actions: shape {list(actions.shape)}, expected [{count}, K, {ACTION_DIM}] or "
             f"[{count}, {ACTION_DIM}]")
    chunk = actions.shape[1]
    tokens = np.asarray(tokens).reshape(count, -1)
    log_probs = np.asarray(log_probs, np.float32).reshape(count, -1)
    values = np.asarray(values, np.float32).reshape(count)
    for name, array in (("tokens", tokens), ("log_probs", log_probs)):
        _require(array.shape[1] == chunk * ACTION_DIM,
                 f"{name}: {array.shape[1]} per entry, expected {chunk} x {ACTION_DIM} (chunk of {chunk})")
    msg = ActionBatch()
    if header is not None:
        msg.header = header
    msg.bridge_id = bridge_id
    msg.incarnation = int(incarnation)
    msg.step_seq = int(step_seq)
    msg.env_ids = [int(e) for e in env_ids]
    msg.policy_version = int(policy_version)
    msg.action_dim = ACTION_DIM
    msg.chunk_size = int(chunk)
    msg.action_tokens = tokens.astype(np.int32).ravel()
    msg.actions = actions.ravel()
    msg.token_log_probs = log_probs.ravel()
    msg.values = values
    msg.temperature = float(temperature)
    return msg


def actions_from_msg(msg: ActionBatch, expected_env_ids: Sequence[int] | None = None,
                     chunk_size: int | None = None,
                     token_range: tuple[int, int] | None = None) -> ActionBatchData:
    """Validated core view of an ActionBatch; raises MessageError naming the field and the value.

    Checked: entries match ``expected_env_ids``; ``chunk_size`` is in [1, MAX_CHUNK_SIZE] and,
    when given, equal to ``chunk_size``; every array has B x K x 7 values (B for values);
    actions, log-probs and values are finite, actions within MAX_ABS_ACTION; tokens are
    non-negative and, when ``token_range=(start, end)`` is given, action tokens of that vocabulary.
    A bad chunk rejects the whole batch: a bridge then takes no step, so every episode stays whole.
    """
    count = len(msg.env_ids)
    _require(count > 0, "actions: empty batch (no env_ids)")
    _require(msg.action_dim == ACTION_DIM, f"actions.action_dim={msg.action_dim}, expected {ACTION_DIM}")
    chunk = int(msg.chunk_size)
    _require(1 <= chunk <= MAX_CHUNK_SIZE, f"actions.chunk_size={chunk}, expected 1..{MAX_CHUNK_SIZE}")
    if chunk_size is not None:
        _require(chunk == int(chunk_size), f"actions.chunk_size={chunk}: this node runs chunks of "
                                           f"{int(chunk_size)} (policy.chunk_size)")
    if expected_env_ids is not None:
        _require(list(msg.env_ids) == list(expected_env_ids),
                 f"actions.env_ids {list(msg.env_ids)} do not match the pending batch "
                 f"{list(expected_env_ids)}")
    width = chunk * ACTION_DIM
    for name in ("actions", "action_tokens", "token_log_probs"):
        size = len(getattr(msg, name))
        _require(size == count * width,
                 f"actions.{name}: {size} values, expected {count} x {chunk} x {ACTION_DIM} "
                 f"(chunk_size {chunk})")
    _require(len(msg.values) == count, f"actions.values: {len(msg.values)} values, expected {count}")
    actions = np.asarray(msg.actions, np.float32).reshape(count, chunk, ACTION_DIM)
    log_probs = np.asarray(msg.token_log_probs, np.float32).reshape(count, width)
    values = np.asarray(msg.values, np.float32)
    for name, array in (("actions", actions), ("token_log_probs", log_probs), ("values", values)):
        bad = ~np.isfinite(array.reshape(count, -1)).all(axis=1)
        _require(not bad.any(), f"actions.{name}: contains NaN or inf "
                                f"(entries {np.flatnonzero(bad).tolist()})")
    worst = float(np.abs(actions).max())
    _require(worst <= MAX_ABS_ACTION,
             f"actions.actions: magnitude {worst:.3g} exceeds {MAX_ABS_ACTION}")
    tokens = np.asarray(msg.action_tokens, np.int64).reshape(count, width)
    low, high = (0, 2 ** 31) if token_range is None else (int(token_range[0]), int(token_range[1]))
    outside = tokens[(tokens < low) | (tokens >= high)]
    _require(not outside.size, f"actions.action_tokens: {outside.size} token(s) outside the action "
                               f"vocabulary [{low}, {high}), e.g. {outside[:3].tolist()}")
    return ActionBatchData(
        bridge_id=msg.bridge_id, step_seq=int(msg.step_seq), env_ids=[int(e) for e in msg.env_ids],
        policy_version=int(msg.policy_version), tokens=tokens, actions=actions, log_probs=log_probs,
        values=values, temperature=float(msg.temperature), chunk_size=chunk,
        incarnation=int(msg.incarnation))


# ----------------------------------------------------------------------------- episodes
def episode_result_to_msg(bridge_id: str, env_id: int, episode_id: int, task_id: int, init_state_id: int,
                          num_steps: int, success: bool, truncated: bool, aborted: bool,
                          reason: str = "", header: Header | None = None,
                          final_observation: Observation | None = None,
                          num_decisions: int | None = None, last_step_seq: int = 0,
                          incarnation: int = 0) -> EpisodeResult:
    """Build the EpisodeResult of one finished episode, with its terminal observation when given.

    ``num_steps`` counts environment steps, ``num_decisions`` the policy's chunks (default: one
    per step, K = 1); ``last_step_seq`` is the step_seq of the last ActionBatch the episode ran
    (a recorder keeps the bag open until that batch is in it).
    """
    msg = EpisodeResult()
    if header is not None:
        msg.header = header
    msg.bridge_id = bridge_id
    msg.incarnation = int(incarnation)
    msg.env_id, msg.episode_id, msg.task_id = int(env_id), int(episode_id), int(task_id)
    msg.init_state_id, msg.num_steps = int(max(init_state_id, 0)), int(num_steps)
    msg.num_decisions = int(num_steps if num_decisions is None else num_decisions)
    msg.last_step_seq = int(last_step_seq)
    msg.success, msg.truncated, msg.aborted = bool(success), bool(truncated), bool(aborted)
    msg.reason = reason
    if final_observation is not None:
        msg.final_image = image_to_msg(final_observation.image, header)
        msg.final_proprio = np.asarray(final_observation.proprio, np.float32).ravel()
    return msg


def check_episode_result(msg: EpisodeResult, image_size: int | None = None) -> EpisodeResult:
    """``msg`` if it is a sound EpisodeResult, else MessageError naming the field.

    Checked: a bridge id; every decision ran 1..MAX_CHUNK_SIZE env steps (at most that many for
    an aborted episode; 0 decisions only with 0 steps); the abort reason's length; the terminal
    observation's image (rgb8, of ``image_size`` when given) and a finite proprio.
    """
    _require(bool(msg.bridge_id), "episode_result.bridge_id: empty")
    steps, decisions = int(msg.num_steps), int(msg.num_decisions)
    _require((msg.aborted or decisions <= steps) and steps <= decisions * MAX_CHUNK_SIZE,
             f"episode_result: {steps} env steps in {decisions} decisions (each runs 1..{MAX_CHUNK_SIZE})")
    _require(len(msg.reason) <= MAX_REASON_CHARS,
             f"episode_result.reason: {len(msg.reason)} characters, at most {MAX_REASON_CHARS}")
    if msg.final_image.height or msg.final_image.width or len(msg.final_image.data):
        image_from_msg(msg.final_image, image_size, "episode_result.final_image")
    _require(bool(np.isfinite(np.asarray(msg.final_proprio, np.float32)).all()),
             "episode_result.final_proprio: contains NaN or inf")
    return msg


def task_assignments_from_msg(
        msg, num_envs: int, known_task_ids: Collection[int],
        num_init_states: int = LIBERO_INIT_STATES_PER_TASK) -> list[tuple[int, int, int]]:
    """``[(env_id, task_id, init_state_id)]`` of a TaskAssignment, checked against the bridge's envs."""
    count = len(msg.env_ids)
    _require(len(msg.task_ids) == count and len(msg.init_state_ids) == count,
             f"task assignment: {count} env_ids, {len(msg.task_ids)} task_ids, "
             f"{len(msg.init_state_ids)} init_state_ids")
    out = []
    for env_id, task_id, init_id in zip(msg.env_ids, msg.task_ids, msg.init_state_ids):
        _require(0 <= env_id < num_envs, f"task assignment: env_id {env_id} outside [0, {num_envs})")
        _require(task_id in known_task_ids,
                 f"task assignment: unknown task id {task_id}, known {sorted(known_task_ids)}")
        try:  # a fixed init state or a fresh layout (the learner's plan draws both: splits.py)
            check_init_state_id(init_id, num_init_states)
        except ValueError as err:
            raise MessageError(f"task assignment: {err}") from None
        out.append((int(env_id), int(task_id), int(init_id)))
    return out


def task_request_from_msg(msg) -> list[tuple[str, int]]:
    """The waiting ``(bridge_id, env_id)`` slots of a task request (graph.lockstep)."""
    _require(bool(msg.bridge_id) and len(msg.env_ids) > 0 and not msg.task_ids and not msg.init_state_ids,
             f"task request: a bridge id and env ids only, got bridge {msg.bridge_id!r}, env ids "
             f"{list(msg.env_ids)}, {len(msg.task_ids)} task ids, {len(msg.init_state_ids)} init state ids")
    return [(msg.bridge_id, int(env_id)) for env_id in msg.env_ids]
