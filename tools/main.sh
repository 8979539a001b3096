#!/usr/bin/env bash
# The README's main-job command: set up (idempotent), then the train_sim ROS 2 graph learns from the
# embedded default (checkpoints/default) on LIBERO, on CPU, for an hour, then a held-out evaluation,
# plots and a report (vla-rl train-graph). Extra arguments go to `vla-rl train-graph`, e.g.
# tools/main.sh --hours 2, tools/main.sh --from-scratch (demos -> SFT -> PRM first).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/tools/setup.sh"
venv="${VLA_RL_VENV:-$root/.venv}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOG_DIR="${ROS_LOG_DIR:-$root/runs/ros_logs}"
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds_local.xml}"
export MUJOCO_GL="${MUJOCO_GL:-egl}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$root"
exec "$venv/bin/vla-rl" train-graph --config "$root/config/train_sim.yaml" "$@"
