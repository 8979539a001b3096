"""``vla-rl bench graph`` measures both loops on the same environments and model and reports the ratio."""
import json
from pathlib import Path

import pytest

from dds_domains import isolate_dds
from vla_rl_ros.cli import bench_cmd
from vla_rl_ros.core.config import load_config
from vla_rl_ros.bench.graph_bench import bench_graph

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_bench_graph_reports_both_throughputs_and_their_ratio(monkeypatch):
    isolate_dds(monkeypatch)
    cfg = load_config(None, ["env.backend=toy", "env.task_ids=[0,1]", "env.image_size=32", "policy.size=tiny",
                             "policy.image_size=32", "train.torch_threads=1"])
    result = bench_graph(cfg, steps=6, warmup=1, rounds=1)
    json.dumps(result)  # the CLI prints it as JSON
    for loop in ("in_process", "graph"):
        assert result[loop]["env_steps_per_s"] > 0 and len(result[loop]["runs"]) == 1
        assert all(run["env_steps"] == 6 * cfg.env.num_envs for run in result[loop]["runs"])
    assert result["ratio_graph_over_in_process"] == pytest.approx(
        result["graph"]["env_steps_per_s"] / result["in_process"]["env_steps_per_s"])
    assert "graph" in bench_cmd.TARGETS
