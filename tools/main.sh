#!/usr/bin/env bash
# The README's main-job command: set up (idempotent), then the default pipeline
# (scripted-expert demos -> SFT of the small VLA -> VLA-RL -> held-out evaluation) on CPU.
# Extra arguments go to `vla-rl run`, e.g. tools/main.sh --set train.iterations=2
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/tools/setup.sh"
venv="${VLA_RL_VENV:-$root/.venv}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOG_DIR="${ROS_LOG_DIR:-$root/runs/ros_logs}"
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds_local.xml}"
export MUJOCO_GL="${MUJOCO_GL:-egl}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$root"
exec "$venv/bin/vla-rl" run --config "$root/config/train_sim.yaml" "$@"
