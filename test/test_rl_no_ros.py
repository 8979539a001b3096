"""The RL core and the toy env never import ROS (they must run without a ROS installation)."""
import subprocess
import sys

MODULES = ["ppo_math", "curriculum", "segmentation", "rollout", "buffer", "ppo_trainer", "prm",
           "prm_training", "prm_data", "best_of_n", "checkpoint", "results", "train_loop", "config"]


def test_rl_core_imports_no_ros():
    imports = "; ".join(f"import vla_rl_ros.core.rl.{m}" for m in MODULES)
    code = (f"import sys; {imports}; import vla_rl_ros.core.envs.toy; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('rclpy', 'rosidl_runtime_py', 'std_msgs', 'sensor_msgs', 'vla_rl_ros.msg') "
            "or m.startswith('vla_rl_ros.msg') or m.startswith('vla_rl_ros.nodes')); print(bad); "
            "sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
