"""Recorded episodes: the turns a trajectory bag holds for one episode, and their core Episode.

:func:`~vla_rl_ros.nodes.trajectory_bags.read_episodes` collects :class:`EpisodeSteps` (one per
episode, keyed by bridge, bridge run, env and episode id); :func:`to_core_episode` turns a finished
one into the core's :class:`~vla_rl_ros.core.rl.rollout.Episode`, ordering its turns by step
sequence (the order the bridge ran them, not the order they reached the recorder) and checking
that they add up to what the bridge's EpisodeResult reports.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EpisodeSteps:
    """One recorded episode, turn-major (a turn = one observation and the chunk that answered it)."""

    bridge_id: str
    incarnation: int
    """The bridge run (ObservationBatch.incarnation; 0 in bags recorded before runs had ids)."""
    env_id: int
    episode_id: int
    task_id: int = -1
    instruction: str = ""
    chunk_size: int = 0
    """Actions per turn K (0 until the first turn is paired)."""
    images: list = field(default_factory=list)
    proprio: list = field(default_factory=list)
    step_indices: list = field(default_factory=list)
    """Environment steps executed before each turn (ObservationBatch.step_indices)."""
    step_seqs: list = field(default_factory=list)
    """step_seq of each turn's ObservationBatch / ActionBatch."""
    tokens: list = field(default_factory=list)
    """int64 [K * 7] per turn."""
    actions: list = field(default_factory=list)
    """float32 [K, 7] per turn."""
    log_probs: list = field(default_factory=list)
    values: list = field(default_factory=list)
    policy_versions: list = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    """env step index -> PRM progress after the turn that began there, where the PRM scored it."""
    result: object = None
    """The EpisodeResult message, or None when the episode had not ended in this bag."""
    bags: list = field(default_factory=list)
    """Paths of the bags holding its turns, in reading order (a restarted learner re-reads them)."""
    last_bag: int = 0
    """Index (in reading order) of the last bag that added a turn: how long it has been idle."""

    @property
    def key(self) -> tuple[str, int, int, int]:
        """(bridge_id, incarnation, env_id, episode_id): unique across bridge restarts."""
        return (self.bridge_id, self.incarnation, self.env_id, self.episode_id)

    @property
    def num_steps(self) -> int:
        """Turns that have both an observation and an action chunk."""
        return len(self.actions)


STEP_LISTS = ("images", "proprio", "step_indices", "step_seqs", "tokens", "actions", "log_probs", "values",
              "policy_versions")
"""The per-turn lists of EpisodeSteps (same length, turn order)."""


def episode_key_text(key) -> str:
    """``bridge|incarnation|env|episode``: an episode key as a string (the learner's state keeps them)."""
    return "|".join(str(part) for part in key)


class EpisodeDataError(ValueError):
    """A recorded episode's turns do not add up (missing turn, wrong executed count, bad token)."""


def executed_steps(steps: EpisodeSteps) -> list[int]:
    """Environment steps each turn executed; EpisodeDataError unless each is in [1, K].

    They are the gaps between the turns' step indices, and for the last turn what the
    EpisodeResult's ``num_steps`` leaves.
    """
    ends = list(steps.step_indices[1:]) + [int(steps.result.num_steps)]
    executed = [end - start for start, end in zip(steps.step_indices, ends)]
    bad = [(t, e) for t, e in enumerate(executed) if not 1 <= e <= max(steps.chunk_size, 1)]
    if bad:
        raise EpisodeDataError(f"executed steps {executed} (turn, count) {bad[:3]} outside [1, "
                               f"{steps.chunk_size}]: a turn is missing from the bag")
    return executed


def _turns_that_ran(steps: EpisodeSteps) -> EpisodeSteps:
    """Its turns in step-sequence order, without any that answered an observation after the end."""
    order = sorted(range(steps.num_steps), key=lambda t: steps.step_seqs[t])
    steps = dataclasses.replace(steps, **{f: [getattr(steps, f)[t] for t in order] for f in STEP_LISTS})
    result, turns = steps.result, steps.num_steps
    last = int(result.last_step_seq)
    if last:
        turns = sum(1 for seq in steps.step_seqs if seq <= last)
        if not turns or steps.step_seqs[turns - 1] != last:
            raise EpisodeDataError(f"the turn of step_seq {last}, which the bridge ran last, is not in "
                                   "the bag")
    elif result.num_decisions == turns - 1 and steps.step_indices[-1] == result.num_steps:
        turns -= 1  # (bags without last_step_seq) the last chunk answered an observation after the end
    return dataclasses.replace(steps, **{f: getattr(steps, f)[:turns] for f in STEP_LISTS})


def to_core_episode(steps: EpisodeSteps, token_range: tuple[int, int] | None = None):
    """The core's :class:`~vla_rl_ros.core.rl.rollout.Episode` of a recorded episode, or None.

    None when it has no turn or never ended. Turns are taken in step-sequence order, up to the
    result's ``last_step_seq`` (a chunk that answered an observation after the end never ran);
    they carry tokens [K * 7], the chunk [K, 7] and the env steps it ``executed``; observations
    are ``o_0..o_T``, the terminal one from the EpisodeResult. PRM progress is
    ``[0, p_0, ..., p_{T-1}]`` when every turn was scored, else None (outcome-only reward).
    Raises EpisodeDataError when the turns do not add up: the last one the bridge ran is missing,
    their count differs from the result's ``num_decisions``, an executed count is outside
    [1, K], or a token is outside ``token_range``.
    """
    from vla_rl_ros.core.rl.rollout import Episode
    result = steps.result
    if result is None or steps.num_steps == 0:
        return None
    trimmed = _turns_that_ran(steps)
    turns = trimmed.num_steps
    if turns == 0:
        return None
    if result.num_decisions != turns:
        raise EpisodeDataError(f"{turns} turns recorded, the bridge reported {result.num_decisions} "
                               "decisions")
    executed = executed_steps(trimmed)
    tokens = np.stack(trimmed.tokens)
    if token_range is not None and ((tokens < token_range[0]) | (tokens >= token_range[1])).any():
        raise EpisodeDataError(f"action tokens outside the policy's action vocabulary {list(token_range)}")
    images, proprio = list(trimmed.images), list(trimmed.proprio)
    final = result.final_image
    if final.height and len(final.data) == final.height * final.width * 3:
        images.append(np.frombuffer(final.data, np.uint8).reshape(final.height, final.width, 3))
        proprio.append(np.asarray(result.final_proprio, np.float32))
    else:
        images.append(images[-1])
        proprio.append(proprio[-1])
    shapes = {(image.shape, np.shape(state)) for image, state in zip(images, proprio)}
    if len(shapes) > 1:
        raise EpisodeDataError(f"observations of different shapes (image, proprio) {sorted(shapes)[:3]}")
    rewards = [0.0] * turns
    rewards[-1] = float(result.success)
    scored = [steps.progress.get(k) for k in trimmed.step_indices]
    progress = np.array([0.0] + scored, dtype=np.float64) if all(p is not None for p in scored) else None
    return Episode(task_id=steps.task_id, init_state_id=int(result.init_state_id),
                   instruction=steps.instruction, images=images, proprio=proprio,
                   tokens=list(trimmed.tokens), actions=list(trimmed.actions),
                   log_probs=list(trimmed.log_probs), values=list(trimmed.values), env_rewards=rewards,
                   executed=executed,
                   success=bool(result.success), truncated=bool(result.truncated),
                   aborted=bool(result.aborted), aborted_reason=str(result.reason) if result.aborted else "",
                   progress=progress)


def rebuild_keyed(finished: list[EpisodeSteps], token_range: tuple[int, int] | None = None):
    """Like :func:`rebuild_episodes`, with each usable episode as ``(key, Episode)``."""
    keyed, rejected, problems = [], {}, []
    for steps in finished:
        episode, reason = None, "aborted" if steps.result is not None and steps.result.aborted else ""
        if not reason:
            try:
                episode = to_core_episode(steps, token_range)
                reason = "" if episode is not None else "no_turns"
            except EpisodeDataError as err:
                reason = "inconsistent"
                problems.append(f"episode {steps.episode_id} ({steps.bridge_id!r} run {steps.incarnation} "
                                f"env {steps.env_id}): {err}")
        if reason:
            rejected[reason] = rejected.get(reason, 0) + 1
        else:
            keyed.append((steps.key, episode))
    return keyed, rejected, problems


def rebuild_episodes(finished: list[EpisodeSteps], token_range: tuple[int, int] | None = None):
    """Core episodes of finished recorded ones: ``(episodes, rejected, problems)``.

    ``episodes`` are the usable ones (not aborted, turns consistent), ``rejected`` counts those
    left out per reason (``aborted``, ``no_turns``, ``inconsistent``), ``problems`` has one line
    per inconsistent episode saying why.
    """
    keyed, rejected, problems = rebuild_keyed(finished, token_range)
    return [episode for _, episode in keyed], rejected, problems
