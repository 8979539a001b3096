"""``vla-rl run``: the main job on one config, stage after stage, each resumable.

The default pipeline is what a user without any checkpoint or dataset needs: scripted-expert
demonstrations in LIBERO, imitation of the small VLA (with held-out evaluation), the process
reward model, then VLA-RL from the SFT checkpoint (with held-out evaluation before and during
training). Every stage is its own subcommand (and skips or resumes work already on disk), so
``run`` only chains them with the same ``--config`` and ``--set`` arguments, plus the paths that
connect one stage's output to the next stage's input unless the user set them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vla_rl_ros.cli.main import add_config_arguments
from vla_rl_ros.core.config import ExperimentConfig, load_config

STAGES = ("demos", "sft", "train-prm", "train")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    parser = sub.add_parser(
        "run", help="the main job on the embedded default (demos, SFT, PRM, RL)",
        description="Run the default pipeline " + " -> ".join(STAGES) + "; finished stages are skipped.")
    add_config_arguments(parser)
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} to run, in pipeline order")
    parser.set_defaults(func=run)


def parse_stages(text: str) -> list[str]:
    """Validated stage list in pipeline order."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise SystemExit(f"vla-rl run: unknown or empty --stages {unknown or text!r}; "
                         f"choose from {','.join(STAGES)}")
    return [s for s in STAGES if s in chosen]


def stage_links(cfg: ExperimentConfig, overrides: list[str]) -> dict[str, list[str]]:
    """Arguments that connect each stage's input to the previous stage's output.

    Demonstrations feed SFT and the PRM; the SFT policy feeds the PRM and RL; the PRM feeds RL.
    A path the user set (in the file or with ``--set``) is never replaced.
    """
    chosen = {item.split("=", 1)[0] for item in overrides}
    demos: list[str] = []
    if cfg.sft.demo_dir != cfg.demos.output_dir and "sft.demo_dir" not in chosen:
        demos = ["--set", f"sft.demo_dir={cfg.demos.output_dir}"]
    sft_policy: list[str] = []
    if not cfg.policy.model_path and "policy.model_path" not in chosen:
        sft_policy = ["--set", f"policy.model_path={Path(cfg.sft.output_dir) / 'policy'}"]
    prm_dir = cfg.reward.prm_path or str(Path(cfg.train.output_dir) / "prm")
    # The PRM is built on the SFT policy so that it shares its action tokenizer (a check in
    # `train` refuses a PRM whose action statistics differ from the policy's).
    prm = ["--demos", cfg.demos.output_dir, "--out", prm_dir] + sft_policy
    rl = list(sft_policy)
    if cfg.reward.prm_weight > 0 and not cfg.reward.prm_path and "reward.prm_path" not in chosen:
        rl += ["--set", f"reward.prm_path={prm_dir}"]
    return {"sft": demos, "train-prm": prm, "train": rl}


def run(args: argparse.Namespace) -> int:
    """Run each chosen stage through the ``vla-rl`` entry point; stop at the first failure."""
    from vla_rl_ros.cli.main import main as vla_rl

    common = (["--config", args.config] if args.config else [])
    for item in args.overrides:
        common += ["--set", item]
    links = stage_links(load_config(args.config, args.overrides), args.overrides)
    for stage in parse_stages(args.stages):
        started = time.time()
        print(f"[vla-rl run] stage {stage}", file=sys.stderr, flush=True)
        code = vla_rl([stage] + common + links.get(stage, []))
        print(f"[vla-rl run] stage {stage} finished with code {code} in {time.time() - started:.0f} s",
              file=sys.stderr, flush=True)
        if code:
            return code
    return 0
