#!/usr/bin/env bash
# The README's test command: set up (idempotent), then the whole test suite.
# Extra arguments go to pytest, e.g. tools/test.sh -k config -x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/tools/setup.sh"
venv="${VLA_RL_VENV:-$root/.venv}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST      # no DDS traffic leaves loopback
export ROS_LOG_DIR="${ROS_LOG_DIR:-$root/build/ros_logs}"
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds_local.xml}"
export MUJOCO_GL="${MUJOCO_GL:-egl}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$root"
set +e
"$venv/bin/python" -m pytest test "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that must fail, never pass silently.
if [ "$rc" -eq 5 ]; then echo "tools/test.sh: no tests were collected" >&2; exit 1; fi
exit "$rc"
