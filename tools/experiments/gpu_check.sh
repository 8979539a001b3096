#!/usr/bin/env bash
# Experiment (not a test): what a CUDA GPU changes, for machines without this package installed.
#
#   OUT=runs/gpu_check bash tools/experiments/gpu_check.sh
#
# Runs from the repository root with the machine's own python3 (torch, transformers, peft); LIBERO
# is not needed, so the RL loop runs on the toy env. Writes under $OUT:
#   bench_small.json  - the small (CPU default) policy on the GPU: decode and PPO fwd+bwd per batch
#   bench_7b.json     - the openvla-7b shape in bf16 (random weights): decode per batch
#   bench_7b_compiled.json - the same with policy.compile_decode (static cache, CUDA graphs)
#   bench_7b_ppo.json - the same shape's PPO fwd+bwd at small batches
#   toy_*.jsonl       - `vla-rl train` on the GPU: 4 iterations straight, and 2 then resumed to 4;
#                       the last lines are compared, because exact resume is a promise of `train`
#   toy_scaling.json  - best-of-N scored by a PRM, on the GPU (then PRM-rewarded training, rc only)
#   toy_train_prm.json - `vla-rl train-prm` on the GPU (collect, label, train, measure)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:?set OUT to a results folder}
mkdir -p "$OUT"
# Runs, checkpoints and PRMs the results do not keep; a fresh folder, so reruns never mix.
SCRATCH=${SCRATCH:-$(mktemp -d)}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
VLA=("$PY" -m vla_rl_ros.cli.main)  # an array, not a function: timeout runs programs only

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import sys, torch, transformers, peft; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__)"

timeout 150 "${VLA[@]}" bench policy --set policy.device=cuda --batch-sizes 1,8,32,64 --out "$OUT/bench_small.json" >/dev/null
echo "small: rc=$?"
SEVEN=(--set policy.device=cuda --set policy.size=openvla-7b --set policy.dtype=bfloat16 --set policy.image_size=224)
timeout 200 "${VLA[@]}" bench policy "${SEVEN[@]}" --batch-sizes 1,8,64 --repeats 5 --no-update --out "$OUT/bench_7b.json" >/dev/null
echo "7b decode: rc=$?"
# policy.compile_decode: static KV cache + CUDA graphs of the token step (the batch-1 fix); the
# first call per batch size compiles, and the JSON's first_call_ms shows what that costs.
timeout 300 "${VLA[@]}" bench policy "${SEVEN[@]}" --set policy.compile_decode=true --batch-sizes 1,8 --repeats 10 \
    --no-update --out "$OUT/bench_7b_compiled.json" >/dev/null
echo "7b compiled decode: rc=$?"
timeout 150 "${VLA[@]}" bench policy "${SEVEN[@]}" --batch-sizes 1,8 --repeats 3 --out "$OUT/bench_7b_ppo.json" >/dev/null
echo "7b ppo: rc=$?"

TOY=(--no-progress --set env.backend=toy --set "env.task_ids=[0,1]" --set env.num_envs=2 --set env.image_size=32
     --set env.max_episode_steps=4 --set policy.size=tiny --set policy.image_size=32 --set policy.device=cuda
     --set train.episodes_per_iter=4 --set train.eval_every=2 --set train.eval_episodes=2 --set ppo.minibatch_size=4
     --set ppo.critic_warmup_iters=1 --set reward.prm_weight=0 --set train.torch_threads=1)
rm -rf "$SCRATCH/toy_straight" "$SCRATCH/toy_resumed"
timeout 100 "${VLA[@]}" train "${TOY[@]}" --set train.output_dir="$SCRATCH/toy_straight" --set train.iterations=4 >/dev/null
echo "toy straight: rc=$?"
timeout 100 "${VLA[@]}" train "${TOY[@]}" --set train.output_dir="$SCRATCH/toy_resumed" --set train.iterations=2 >/dev/null
timeout 100 "${VLA[@]}" train "${TOY[@]}" --set train.output_dir="$SCRATCH/toy_resumed" --set train.iterations=4 >/dev/null
echo "toy resumed: rc=$?"
cp "$SCRATCH/toy_straight/metrics.jsonl" "$OUT/toy_straight.jsonl"

# The PRM on the GPU: a saved tiny policy and a PRM matching it, then best-of-N evaluation scored
# by the PRM, and training with the PRM's dense reward.
rm -rf "$SCRATCH/toy_prm" && "$PY" - "$SCRATCH/toy_prm" <<'EOF_PY'
import sys

from vla_rl_ros.core.envs.toy import toy_instruction, toy_task_count
from vla_rl_ros.core.policy import PolicyConfig, VLAPolicy
from vla_rl_ros.core.rl.prm import ProcessRewardModel
words = [toy_instruction(i) for i in range(toy_task_count())]
tiny = lambda: VLAPolicy.create(PolicyConfig(size="tiny", image_size=32), instructions=words)  # noqa: E731
tiny().save(f"{sys.argv[1]}/policy")
ProcessRewardModel(tiny()).save(f"{sys.argv[1]}/prm")
EOF_PY
timeout 100 "${VLA[@]}" eval --policy "$SCRATCH/toy_prm/policy" --prm "$SCRATCH/toy_prm/prm" --scaling 1,4 \
    --set env.backend=toy --set "env.task_ids=[0,1]" --set env.num_envs=2 --set env.image_size=32 \
    --set env.max_episode_steps=4 --set policy.image_size=32 --set policy.device=cuda --seeds 0 \
    --episodes-per-task 2 --no-progress --output "$OUT/toy_scaling.json" >/dev/null
echo "toy best-of-N with the PRM: rc=$?"
timeout 100 "${VLA[@]}" train "${TOY[@]}" --set train.output_dir="$SCRATCH/toy_prm/train" --set train.iterations=2 \
    --set policy.model_path="$SCRATCH/toy_prm/policy" --set reward.prm_path="$SCRATCH/toy_prm/prm" --set reward.prm_weight=0.1 \
    >/dev/null
echo "toy train with the PRM: rc=$?"
timeout 100 "${VLA[@]}" train-prm --no-progress --out "$SCRATCH/toy_prm/trained" --set env.backend=toy \
    --set "env.task_ids=[0]" --set env.num_envs=2 --set env.image_size=32 --set env.max_episode_steps=10 \
    --set policy.size=tiny --set policy.image_size=32 --set policy.device=cuda \
    --set reward.prm_rollout_episodes=4 --set reward.prm_epochs=1 --set train.torch_threads=1 >"$OUT/toy_train_prm.json"
echo "toy train-prm: rc=$?"
cp "$SCRATCH/toy_resumed/metrics.jsonl" "$OUT/toy_resumed.jsonl"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("bench_small", "bench_7b", "bench_7b_compiled", "bench_7b_ppo"):
    path = out / f"{name}.json"
    if path.exists():
        data = json.loads(path.read_text())
        print(name, data["size"], data["dtype"], data["gpu"], "params", data["parameters"], f"build {data['build_s']} s")
        for row in data["results"]:
            print("  ", {k: v for k, v in row.items() if k != "latency_ms_min"})
        print("   goals:", {k: v for k, v in data.items() if k.startswith("goal") or k.startswith("speedup")})
last = {}
for name in ("toy_straight", "toy_resumed"):
    rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    last[name] = rows[-1]
    print(name, "iterations", [r.get("iteration") for r in rows])
same = {k for k in last["toy_straight"] if last["toy_straight"][k] == last["toy_resumed"].get(k)}
differ = sorted(set(last["toy_straight"]) - same)
print("resume on the GPU: last iteration's metrics equal except", differ)
EOF
