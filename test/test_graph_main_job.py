"""``vla-rl train-graph`` (the README's main job) on the toy graph: it trains through the graph for
its duration, evaluates the start and the end on held-out contexts, writes the plots and the
summary, prints where they are, and a rerun resumes from the learner's checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dds_domains import isolate_dds
from toy_graph_params import write_toy_graph_params

pytestmark = pytest.mark.slow
SECONDS = 45


def train_graph(config, tmp_path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vla_rl_ros.cli.main", "train-graph", "--config", str(config),
               "--hours", str(SECONDS / 3600), "--status-every", "10", "--set", "train.eval_episodes=6"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def test_train_graph_trains_evaluates_reports_and_resumes(tmp_path, monkeypatch):
    isolate_dds(monkeypatch)
    # Lockstep, as config/train_sim.yaml ships the main job.
    config = write_toy_graph_params(tmp_path, episodes_per_iter=2, action_timeout_s=3.0, lockstep=True)
    first = train_graph(config, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    results = tmp_path / "run" / "results"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["route"] == "graph (train_sim)" and summary["policy_versions"] >= 1
    assert summary["eval_first"]["eval/episodes"] == 6 and summary["eval_last"]["iteration"] >= 1
    for plot in ("success_vs_iteration.png", "success_vs_env_steps.png", "per_task_success.png"):
        assert (results / plot).stat().st_size > 1000
    assert "== vla-rl train-graph ==" in first.stdout and str(results) in first.stdout
    assert "[train-graph]" in first.stderr and "policy version" in first.stderr

    start_eval = (results / "eval_start.json").read_text()
    second = train_graph(config, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads((results / "summary.json").read_text())
    assert resumed["policy_versions"] > summary["policy_versions"]  # the learner went on from its checkpoint
    assert (results / "eval_start.json").read_text() == start_eval  # the start is evaluated once
    learner_log = (tmp_path / "run" / "logs" / "learner.log").read_text()
    assert f"resumed from policy version {summary['policy_versions']}" in learner_log
