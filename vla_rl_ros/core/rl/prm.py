"""Process reward model: the small VLA architecture with a progress head.

The PRM reads the same prompt as the policy (image + instruction) followed by the K x 7 action
tokens of the turn (a chunk of K actions), and a linear head on the last hidden state predicts the
task progress *after* that chunk (the pseudo label of the next observation). Because it sees the action,
it can rank candidate actions (best-of-N) as well as score taken steps. Its scores over an
episode give the progress curve ``p_0 = 0, p_{t+1} = PRM(o_t, a_t)`` whose increments are
the dense reward.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.policy.model_dir import atomic_directory, commit_directory, read_tensors
from vla_rl_ros.core.policy.decoding import teacher_forced_hidden
from vla_rl_ros.core.rl.rollout import Episode, step_inputs
from vla_rl_ros.core.rl.segmentation import (eef_stop_events, gripper_closed_from_actions, gripper_events,
                                             progress_labels, segment_boundaries, typical_segment_count)

HEAD_FILE = "progress_head.safetensors"
META_FILE = "prm.json"
SCORE_CHUNK = 64


class PRMError(ConfigError):
    """A PRM directory is missing, corrupt or does not match the policy it should score.

    A ConfigError, so ``vla-rl`` reports it as a configuration problem (``reward.prm_path``).
    """


class ProcessRewardModel:
    """Progress scorer over (observation, action tokens) built on a ``VLAPolicy`` backbone."""

    def __init__(self, backbone: Any, head: nn.Linear | None = None) -> None:
        """Wrap ``backbone`` (a VLAPolicy); a new head starts at zero (score 0.5 everywhere)."""
        self.backbone = backbone
        self.head = head or nn.Linear(backbone.arch.hidden_size, 1)
        if head is None:
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.zero_()
        self.head.to(backbone.device)

    def parameters(self) -> list[nn.Parameter]:
        """What PRM training updates: the backbone's LoRA adapters and the progress head."""
        return list(self.backbone.policy_parameters()) + list(self.head.parameters())

    def score(self, images: np.ndarray, instructions: Sequence[str], tokens: torch.Tensor,
              proprio: np.ndarray | None = None) -> torch.Tensor:
        """Progress in (0, 1) after each step's action ``[B]`` (with grad).

        ``proprio`` [B, 8] is required when the backbone reads the robot state, ignored otherwise.
        """
        policy = self.backbone
        pixels = policy.processor.pixels(images, policy.device)
        input_ids, mask = policy.processor.text(list(instructions), policy.device, proprio)
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=policy.device)
        if tokens.dim() != 2 or tokens.shape[0] != len(images):
            raise ValueError(f"tokens must be [{len(images)}, K], got {list(tokens.shape)}")
        eos = torch.full_like(tokens[:, :1], policy.arch.eos_token_id)
        hidden = teacher_forced_hidden(policy.model, pixels, input_ids, mask, torch.cat([tokens, eos], 1))
        return torch.sigmoid(self.head(hidden[:, -1].float()).squeeze(-1))

    def score_batched(self, images: np.ndarray, instructions: Sequence[str], tokens: torch.Tensor,
                      proprio: np.ndarray | None = None) -> np.ndarray:
        """:meth:`score` without grad in chunks, as float64 numpy ``[B]``."""
        out = []
        with torch.no_grad():
            for start in range(0, len(images), SCORE_CHUNK):
                end = start + SCORE_CHUNK
                rows = None if proprio is None else proprio[start:end]
                out.append(self.score(images[start:end], instructions[start:end], tokens[start:end],
                                      rows).cpu())
        return torch.cat(out).double().numpy() if out else np.zeros(0)

    def score_episodes(self, episodes: Sequence[Episode]) -> None:
        """Set ``episode.progress`` = ``[0, PRM(o_0, a_0), ..., PRM(o_{T-1}, a_{T-1})]`` for each episode."""
        episodes = [e for e in episodes if e.length > 0]
        if not episodes:
            return
        images, instructions, proprio, tokens = step_inputs(episodes)
        scores = self.score_batched(images, instructions, tokens, proprio)
        start = 0
        for episode in episodes:
            episode.progress = np.concatenate([[0.0], scores[start:start + episode.length]])
            start += episode.length

    # ------------------------------------------------------------------------ compatibility
    def signature(self) -> dict[str, Any]:
        """What must agree with a policy whose actions this PRM scores."""
        arch, tok = self.backbone.arch, self.backbone.action_tokenizer
        return {"chunk_size": int(arch.chunk_size), "action_vocab_start": int(arch.action_vocab_start),
                "action_vocab_end": int(arch.action_vocab_end),
                "n_action_bins": int(arch.n_action_bins),
                "action_q01": _plain(tok.q01), "action_q99": _plain(tok.q99), "action_mask": _plain(tok.mask)}

    def check_compatible(self, policy: Any) -> None:
        """Raise PRMError unless the policy's action tokens mean the same actions to this PRM."""
        theirs = ProcessRewardModel.__new__(ProcessRewardModel)
        theirs.backbone = policy
        mine, other = self.signature(), theirs.signature()
        diffs = [k for k in mine if mine[k] != other[k]]
        if diffs:
            raise PRMError("the PRM does not match the policy: " + "; ".join(
                f"{k}: PRM {str(mine[k])[:80]} vs policy {str(other[k])[:80]}" for k in diffs)
                + " (train the PRM with the policy's action tokenizer: vla-rl train-prm)")

    # ---------------------------------------------------------------------------- save/load
    def save(self, directory: str | Path, metrics: dict[str, float] | None = None) -> None:
        """Backbone (adapters merged) + progress head + meta, written to a temp dir then renamed."""
        tmp, directory = atomic_directory(directory)
        try:
            self.backbone.save(str(tmp / "backbone"))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      str(tmp / HEAD_FILE))
            meta = {"signature": self.signature(), "metrics": metrics or {}}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
            commit_directory(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: str | Path, policy_cfg: Any) -> "ProcessRewardModel":
        """Load a directory written by :meth:`save` (backbone built with ``policy_cfg``'s device/dtype)."""
        from vla_rl_ros.core.policy import VLAPolicy
        directory = Path(directory)
        for name in (META_FILE, HEAD_FILE, "backbone"):
            if not (directory / name).exists():
                raise PRMError(f"PRM directory {directory} has no {name} "
                               "(expected a `vla-rl train-prm` output)")
        try:
            json.loads((directory / META_FILE).read_text())
        except json.JSONDecodeError as err:
            raise PRMError(f"{directory / META_FILE} is not valid JSON: {err}") from None
        backbone = VLAPolicy.load(str(directory / "backbone"), policy_cfg)
        head = nn.Linear(backbone.arch.hidden_size, 1)
        try:
            head.load_state_dict(read_tensors(directory / HEAD_FILE))
        except RuntimeError as err:
            raise PRMError(f"{directory / HEAD_FILE} does not fit the backbone: {err}") from None
        return cls(backbone, head)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, np.ndarray):
        return [round(float(x), 6) for x in value.reshape(-1).astype(np.float64)]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------- labels
def turn_actions(episode: Episode) -> np.ndarray:
    """One action per turn [T, 7]: the last one each turn's chunk executed.

    That is the gripper state the turn left behind, which is what segment boundaries are made of.
    """
    rows = []
    for t, action in enumerate(episode.actions):
        chunk = np.asarray(action, dtype=np.float32).reshape(-1, 7)
        executed = episode.executed[t] if t < len(episode.executed) else len(chunk)
        rows.append(chunk[max(min(executed, len(chunk)), 1) - 1])
    return np.stack(rows)


def episode_boundaries(episode: Episode) -> list[int]:
    """Segment boundaries of an episode from gripper commands and end-effector stops."""
    num_obs = episode.length + 1
    events = gripper_events(gripper_closed_from_actions(turn_actions(episode)))
    proprio = np.stack(episode.proprio)
    if proprio.shape[1] >= 3 and len(proprio) >= 2:
        events += eef_stop_events(proprio[:, :3])
    return segment_boundaries(num_obs, events)


def label_episodes(episodes: Sequence[Episode]) -> list[np.ndarray]:
    """Pseudo progress labels ``[T+1]`` per episode; failed ones use their task's typical count."""
    cuts = [episode_boundaries(e) for e in episodes]
    wins_all = [(c, e) for c, e in zip(cuts, episodes) if e.success]
    # Without any success to learn the segment count from, a failure earns nothing: crediting
    # every gripper toggle of a random policy would reward dithering.
    overall = typical_segment_count([c for c, _ in wins_all], [e.length + 1 for _, e in wins_all]) or 1
    typical: dict[int, int] = {}
    for task in {e.task_id for e in episodes}:
        wins = [(c, e) for c, e in wins_all if e.task_id == task]
        count = typical_segment_count([c for c, _ in wins], [e.length + 1 for _, e in wins])
        typical[task] = count or overall
    return [progress_labels(e.length + 1, c, e.success, typical[e.task_id]) for c, e in zip(cuts, episodes)]
