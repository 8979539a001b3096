#!/usr/bin/env bash
# Experiment (not a test): the policy's share of one RL iteration on a GPU, the simulator left out.
#
#   OUT=runs/gpu_iteration bash tools/experiments/gpu_iteration_cost.sh
#
# The LIBERO runs' iterations (docs/results/headline/README.md) hold 8 episodes of about 220
# steps, 128 px frames, the small policy and 2 environments. The toy env keeps those sizes and
# costs almost nothing to step, so time/rollout_s here is decoding plus Python, and time/update_s
# is the PPO update.
# The PRM is off: it is the policy's architecture again, so it would add about one more forward
# pass per step.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:?set OUT to a results folder}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
SCRATCH=${SCRATCH:-$(mktemp -d)}  # the training runs themselves; only their metrics are kept
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
for envs in 2 8; do
  rm -rf "$SCRATCH/iteration_envs$envs"
  timeout 280 "$PY" -m vla_rl_ros.cli.main train --no-progress --no-tensorboard \
      --set env.backend=toy --set "env.task_ids=[0,1,2]" --set env.num_envs=$envs --set env.image_size=128 \
      --set env.max_episode_steps=220 --set policy.size=small --set policy.image_size=128 \
      --set policy.device="$DEVICE" --set policy.temperature=0.5 --set train.episodes_per_iter=8 \
      --set train.iterations=3 --set train.eval_every=0 --set ppo.critic_warmup_iters=1 \
      --set reward.prm_weight=0 --set train.output_dir="$SCRATCH/iteration_envs$envs" >/dev/null
  echo "num_envs=$envs: rc=$?"
  cp "$SCRATCH/iteration_envs$envs/metrics.jsonl" "$OUT/metrics_envs$envs.jsonl"
  "$PY" - "$OUT/metrics_envs$envs.jsonl" <<'EOF_PY'
import json, sys
for line in open(sys.argv[1]):
    row = json.loads(line)
    if "time/update_s" in row:
        print(f"  iteration {row['iteration']}: {row['rollout/episodes']} episodes, "
              f"{row['rollout/episode_length']:.0f} steps each, rollout {row['time/rollout_s']:.1f} s, "
              f"update {row['time/update_s']:.1f} s (warm-up {bool(row.get('ppo/warmup'))})")
EOF_PY
done
