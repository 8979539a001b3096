#!/usr/bin/env bash
# The chunked start of the default task set, and what it is measured by (issue: RL that improves
# the policy). Each step is a command line over the product; each skips what is already on disk.
#   1. demonstrations (vla-rl demos: per task the 40 training init states and 40 fresh training
#   layouts, rendered with the decimated meshes of config/train_sim.yaml), 2. chunked SFT on all of
#   them, 3. its held-out evaluation, greedy, 150
#   episodes (30 held-out init states + 120 held-out layouts), 4. the PRM for that policy,
#   5. rollout cost with the chunked policy (and, if OLD_POLICY is set, with a K = 1 policy),
#   6. docs/results/learning/summary.json.
# Usage: OUT=runs/learning_start bash tools/experiments/learning_start.sh
# Seeds: demos env.seed 0 (config), sft.seed 0, evaluation seed 0, train.seed 0 for the PRM.
# A repeat of the recipe (does it reproduce?): SFT_SEED=1 OUT=runs/learning_start_seed1 runs steps
# 2-3 only with that SFT seed, evaluated into $RESULTS/sft_eval_greedy_seed1.json; the shipped
# start stays the seed-0 run, and learning_summary.py --sft-eval-repeat compares the two.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${OUT:-runs/learning_start}"
results="${RESULTS:-docs/results/learning}"
vla=".venv/bin/vla-rl"
py=".venv/bin/python"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST MUJOCO_GL="${MUJOCO_GL:-egl}" HF_HUB_OFFLINE=1
mkdir -p "$out" "$results"
cfg=(--config config/train_sim.yaml)

[ -f data/demos/default/index.json ] || "$vla" demos "${cfg[@]}"
# The recipe's steps and batch are config/train_sim.yaml's (sft.steps, with its reason).
sft_seed="${SFT_SEED:-0}"
[ -f "$out/sft/sft_result.json" ] || "$vla" sft "${cfg[@]}" --set sft.output_dir="$out/sft" \
  --set sft.checkpoint_every=500 --set sft.seed="$sft_seed"
sft_eval="$results/sft_eval_greedy.json"
[ "$sft_seed" = 0 ] || sft_eval="$results/sft_eval_greedy_seed$sft_seed.json"
[ -f "$sft_eval" ] || "$vla" eval "${cfg[@]}" --policy "$out/sft/policy" --seeds 0 \
  --held-out-layouts 40 --no-progress --output "$sft_eval" > /dev/null
[ "$sft_seed" = 0 ] || exit 0  # a repeat checks the recipe; the PRM and the rest belong to the shipped start
[ -f "$out/prm/prm.json" ] || "$vla" train-prm "${cfg[@]}" --demos data/demos/default \
  --set policy.model_path="$out/sft/policy" --out "$out/prm"
[ -f "$results/rollout_cost_k8.json" ] || "$py" tools/experiments/rollout_cost.py "${cfg[@]}" \
  --policy "$out/sft/policy" --episodes 24 --compare-decoding 8 --out "$results/rollout_cost_k8.json"
before=()
if [ -n "${OLD_POLICY:-}" ]; then
  [ -f "$results/rollout_cost_k1.json" ] || "$py" tools/experiments/rollout_cost.py "${cfg[@]}" \
    --set policy.chunk_size=1 --policy "$OLD_POLICY" --episodes 24 --out "$results/rollout_cost_k1.json"
  before=(--rollout-before "$results/rollout_cost_k1.json")
fi
repeat=()  # a repeat of the recipe (SFT_SEED=1 above), compared under sft.repeat
for f in "$results"/sft_eval_greedy_seed*.json; do
  if [ -f "$f" ]; then repeat=(--sft-eval-repeat "$f"); break; fi
done
"$py" tools/experiments/learning_summary.py --sft-eval "$results/sft_eval_greedy.json" \
  --rollout "$results/rollout_cost_k8.json" "${before[@]}" "${repeat[@]}" ${HEADLINE:+--headline "$HEADLINE"} \
  --out "$results/summary.json"
