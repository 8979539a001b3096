"""The vla-rl command line: help for every subcommand, clear errors for bad arguments."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vla_rl_ros.cli.main import SUBCOMMANDS, main
from vla_rl_ros.cli.run_cmd import STAGES, parse_stages

ROOT = Path(__file__).resolve().parents[1]


def vla_rl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vla_rl_ros.cli.main", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_top_level_help_lists_every_subcommand():
    out = vla_rl("--help")
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_has_its_own_help(name):
    out = vla_rl(name, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"vla-rl {name}" in out.stdout and "--config" in out.stdout


def test_unknown_subcommand_fails_with_usage():
    out = vla_rl("fly")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_bad_override_is_a_clear_error_and_exit_code_2(capsys):
    assert main(["config", "--set", "ppo.gamma=2"]) == 2
    assert "ppo.gamma=2" in capsys.readouterr().err
    assert main(["config", "--set", "ppo.nonsense=1"]) == 2
    assert "ppo.nonsense" in capsys.readouterr().err


def test_config_prints_resolved_params_yaml(capsys):
    assert main(["config", "--set", "ppo.clip_range=0.123"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("/**:") and "clip_range: 0.123" in text


def test_run_stage_selection_keeps_pipeline_order_and_rejects_unknown():
    assert parse_stages("train,demos") == ["demos", "train"]
    assert parse_stages(",".join(STAGES)) == list(STAGES)
    with pytest.raises(SystemExit, match="unknown"):
        parse_stages("demos,dance")


def test_shipped_params_files_exist():
    for name in ("train_sim.yaml", "eval_sim.yaml"):
        assert (ROOT / "config" / name).is_file(), f"config/{name} is missing"


def test_run_feeds_sft_policy_and_prm_into_rl_unless_the_user_chose():
    from vla_rl_ros.cli.run_cmd import stage_links
    from vla_rl_ros.core.config import load_config

    links = stage_links(load_config(overrides=["sft.output_dir=out/sft", "train.output_dir=out/rl"]), [])
    assert links["train"] == ["--set", "policy.model_path=out/sft/policy",
                              "--set", "reward.prm_path=out/rl/prm"]
    chosen = ["policy.model_path=mine", "reward.prm_weight=0"]
    assert stage_links(load_config(overrides=chosen), chosen)["train"] == []
    assert links["train-prm"] == ["--demos", "data/demos/default", "--out", "out/rl/prm",
                                  "--set", "policy.model_path=out/sft/policy"]
    moved = ["demos.output_dir=elsewhere"]
    assert stage_links(load_config(overrides=moved), moved)["sft"] == ["--set", "sft.demo_dir=elsewhere"]


def test_project_errors_are_one_line_not_a_traceback(tmp_path):
    empty = tmp_path / "demos"
    empty.mkdir()
    out = vla_rl("sft", "--set", f"sft.demo_dir={empty}", "--set", f"sft.output_dir={tmp_path / 'sft'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert str(empty) in out.stderr
