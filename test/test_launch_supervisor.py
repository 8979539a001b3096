"""``vla-rl launch`` as a process supervisor: Ctrl-C reaches every node, a dead required node stops all."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dds_domains import loopback_dds_env

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **policy) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "env": {"backend": "toy", "task_ids": [0], "num_envs": 1, "image_size": 32},
        "policy": {"size": "tiny", "image_size": 32, **policy},
        "train": {"output_dir": str(tmp_path / "run")},
        "graph": {"bag_dir": str(tmp_path / "run" / "bags")}}}}))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie has exited already
        return handle.read().split()[2] != "Z"


def test_ctrl_c_stops_every_node(tmp_path):
    launcher = subprocess.Popen(
        [sys.executable, "-m", "vla_rl_ros.cli.main", "launch", "eval_sim", f"config:={_config(tmp_path)}"],
        cwd=ROOT, env=loopback_dds_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pids, lines = [], []
    for line in launcher.stderr:
        lines.append(line)
        pids += [int(p) for p in re.findall(r"started \S+ \(pid (\d+)", line)]
        if len(pids) == 3:
            break
    time.sleep(3.0)  # let the nodes come up (import torch, build the model)
    launcher.send_signal(signal.SIGINT)
    _, rest = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, "".join(lines) + rest
    assert "interrupted: stopping every node" in rest
    assert not [pid for pid in pids if _alive(pid)], "a node outlived the launcher"


def test_a_dead_required_node_stops_the_graph(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vla_rl_ros.cli.main", "launch", "eval_sim",
         f"config:={_config(tmp_path, model_path=str(tmp_path / 'no_such_model'))}", "--duration", "120"],
        cwd=ROOT, env=loopback_dds_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert re.search(r"required node /policy exited with code [1-9]", result.stderr), result.stderr[-3000:]
    assert "duration 120 s reached" not in result.stderr
