"""Record scripted-expert demonstrations in parallel environments as episode bags plus an index.

The index (``index.json`` next to the bags) lists every attempted (task, init state, pass):
successes with their bag, failures without. A rerun skips everything the index already holds, so
an interrupted recording resumes where it stopped. Pass p > 0 (``demos.passes``) replays an init
state with another action-noise stream; index entries written before passes existed are pass 0.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.data.episode_bag import EpisodeRecord, write_episode_bag
from vla_rl_ros.core.envs.config import EnvConfig

INDEX_FILE = "index.json"


def bag_name(suite: str, task_id: int, init_state_id: int, demo_pass: int = 0) -> str:
    """Directory name of one episode bag (pass 0 keeps the name it had before passes existed)."""
    name = f"{suite}_task{task_id:02d}_init{init_state_id:02d}"
    return f"{name}_pass{demo_pass}" if demo_pass else name


def episode_key(entry: dict) -> tuple[int, int, int]:
    """(task, init state, pass) of an index entry; what resume and replacement key on."""
    return (entry["task_id"], entry["init_state_id"], entry.get("pass", 0))


def load_index(directory: str | Path) -> dict:
    """The index of a demonstration directory (an empty one if none exists yet)."""
    path = Path(directory) / INDEX_FILE
    if not path.exists():
        return {"episodes": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"demonstration index {path} is not valid JSON: {err}") from None


def _save_index(directory: Path, index: dict) -> None:
    temporary = directory / (INDEX_FILE + ".tmp")
    temporary.write_text(json.dumps(index, indent=1))
    os.replace(temporary, directory / INDEX_FILE)


@dataclass
class RecordingReport:
    """What a recording run did."""

    attempted: int = 0
    succeeded: int = 0
    aborted: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    per_task: dict = field(default_factory=dict)
    """task_id -> {"attempted": n, "succeeded": k, "steps": total steps of successes}."""

    def as_dict(self) -> dict:
        """JSON-ready summary with per-task success rates."""
        rates = {str(t): dict(v, success_rate=v["succeeded"] / max(v["attempted"], 1))
                 for t, v in sorted(self.per_task.items())}
        return dict(attempted=self.attempted, succeeded=self.succeeded, aborted=self.aborted,
                    skipped=self.skipped, success_rate=self.succeeded / max(self.attempted, 1),
                    wall_s=round(self.wall_s, 1), per_task=rates)


def plan_episodes(task_ids: list[int], init_state_ids: list[int], index: dict,
                  retry_failed: bool = False) -> list[tuple[int, int]]:
    """(task, init state) pairs of pass 0 still to record, grouped by task."""
    return [(t, i) for t, i, _ in plan_pass_episodes(task_ids, init_state_ids, index, retry_failed)]


def plan_pass_episodes(task_ids: list[int], init_state_ids: list[int], index: dict,
                       retry_failed: bool = False, passes: int = 1) -> list[tuple[int, int, int]]:
    """(task, init state, pass) triples still to record, grouped by task, earlier passes first.

    Grouping by task keeps scene rebuilds (a task switch) rare.
    """
    done = {episode_key(e) for e in index.get("episodes", []) if e["success"] or not retry_failed}
    return [(t, i, p) for t in task_ids for p in range(passes) for i in init_state_ids
            if (t, i, p) not in done]


def record_demonstrations(env_cfg: EnvConfig, output_dir: str | Path | None, init_state_ids: list[int],
                          write: bool = True, retry_failed: bool = False, progress: bool = True,
                          vector_env=None, action_noise: float = 0.0, passes: int = 1) -> RecordingReport:
    """Run the scripted expert on every (task, init state, pass) not yet recorded.

    Tasks are ``env_cfg.task_ids``; passes ``0 .. passes-1`` (pass p > 0: another noise stream).

    ``write=False`` is a dry run: nothing is written and every pair is attempted (success rates
    only). ``vector_env`` may be given to reuse running workers; otherwise one is made.
    ``action_noise`` perturbs the executed actions (labels stay the expert's; see
    :func:`~vla_rl_ros.core.envs.vector.perturb_expert_action`); the index records it.
    """
    from tqdm import tqdm

    from vla_rl_ros.core.envs.vector import VectorEnv
    directory = Path(output_dir) if output_dir else None
    index = {"episodes": []}
    if write:
        directory.mkdir(parents=True, exist_ok=True)
        index = load_index(directory)
        index.setdefault("suite", env_cfg.suite)
        if index["suite"] != env_cfg.suite:
            raise ConfigError(f"{directory} holds {index['suite']} demonstrations, not {env_cfg.suite}")
        # An index from before this field existed was recorded without noise.
        index.setdefault("action_noise", 0.0 if index["episodes"] else action_noise)
        if index["action_noise"] != action_noise:  # a mixed set would not say what it holds
            raise ConfigError(f"{directory} was recorded with demos.action_noise={index['action_noise']}, "
                              f"not {action_noise}: use another demos.output_dir")
    queue = plan_pass_episodes(list(env_cfg.task_ids), list(init_state_ids), index, retry_failed, passes)
    report = RecordingReport(skipped=len(env_cfg.task_ids) * len(init_state_ids) * passes - len(queue))
    if not queue:
        return report
    start = time.time()
    envs = vector_env or VectorEnv(env_cfg)
    try:
        _run_queue(envs, env_cfg, queue, directory if write else None, index, report, action_noise,
                   tqdm(total=len(queue), desc="demos", unit="ep", disable=not progress))
    finally:
        if vector_env is None:
            envs.close()
    report.wall_s = time.time() - start
    return report


def _run_queue(envs, env_cfg, queue, directory, index, report, action_noise, bar) -> None:
    slots: list[dict | None] = [None] * envs.num_envs

    def start(slot: int) -> None:
        if not queue:
            slots[slot] = None
            return
        task_id, init_id, demo_pass = queue.pop(0)
        # Pass 0 resets with the pair only, so its noise stream stays the one of older recordings.
        assignment = (task_id, init_id, demo_pass) if demo_pass else (task_id, init_id)
        obs = envs.reset([assignment], env_ids=[slot])[0]
        slots[slot] = dict(task_id=task_id, init_state_id=init_id, demo_pass=demo_pass, observation=obs,
                           images=[], wrist=[], proprio=[], actions=[], started=time.time())

    for slot in range(envs.num_envs):
        start(slot)
    while any(s is not None for s in slots):
        results = envs.step_expert(action_noise)
        for slot, result in enumerate(results):
            episode = slots[slot]
            if episode is None:
                continue
            obs = episode["observation"]
            if not result.aborted:
                episode["images"].append(obs.image)
                episode["proprio"].append(obs.proprio)
                episode["actions"].append(result.info["action"])
                if obs.wrist_image is not None:
                    episode["wrist"].append(obs.wrist_image)
            episode["observation"] = result.observation
            if result.done:
                _finish(episode, result, env_cfg, directory, index, report)
                bar.update(1)
                bar.set_postfix(success=f"{report.succeeded}/{report.attempted}")
                start(slot)
    bar.close()


def _finish(episode, result, env_cfg, directory, index, report) -> None:
    task_id, init_id, demo_pass = episode["task_id"], episode["init_state_id"], episode["demo_pass"]
    if result.aborted:
        report.aborted += 1
        return
    stats = report.per_task.setdefault(task_id, {"attempted": 0, "succeeded": 0, "steps": 0})
    stats["attempted"] += 1
    report.attempted += 1
    entry = {"task_id": task_id, "init_state_id": init_id, "pass": demo_pass, "success": bool(result.success),
             "num_steps": len(episode["actions"]), "instruction": result.observation.instruction,
             "wall_s": round(time.time() - episode["started"], 1)}
    if result.success:
        stats["succeeded"] += 1
        stats["steps"] += len(episode["actions"])
        report.succeeded += 1
    if directory is None:
        return
    if result.success:
        name = bag_name(env_cfg.suite, task_id, init_id, demo_pass)
        extra = {"source": "scripted_expert", "image_size": env_cfg.image_size,
                 "action_noise": index.get("action_noise", 0.0)}
        if demo_pass:  # pass-0 bags keep exactly the metadata they had before passes existed
            extra["pass"] = demo_pass
        record = EpisodeRecord(images=np.stack(episode["images"]), proprio=np.stack(episode["proprio"]),
                               actions=np.stack(episode["actions"]), instruction=entry["instruction"],
                               task_id=task_id, init_state_id=init_id, suite=env_cfg.suite,
                               wrist_images=np.stack(episode["wrist"]) if episode["wrist"] else None,
                               extra=extra)
        if (directory / name).exists():  # a bag left by a run killed between bag and index write
            import shutil
            shutil.rmtree(directory / name)
        write_episode_bag(directory / name, record)
        entry["bag"] = name
    index["episodes"] = [e for e in index["episodes"] if episode_key(e) != episode_key(entry)] + [entry]
    _save_index(directory, index)
