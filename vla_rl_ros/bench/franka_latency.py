"""Latency of the real-arm graph: observation published -> safe command out, through policy + franka_bridge.

Starts franka_bridge (dry run: the command path is the same, only the topic differs) and the
policy as separate processes, exactly as ``deploy_franka`` does, and runs here a sensor stream
(a camera frame, joint states and a still end-effector pose at ``sensor_rate_hz``) plus a probe.
franka_bridge stamps each command with the stamp of the observation it answers, so the probe
measures ``receipt time - stamp`` per step on one clock, and splits it at the ActionBatch's
arrival into the policy part (DDS + decoding) and the bridge part (safety filter + DDS).

    python -m vla_rl_ros.bench.franka_latency --steps 100 --policy-size small
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np
from vla_rl_ros.graph.processes import stop_processes

SENSOR_RATE_HZ = 50.0


def _seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _percentiles(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "max_ms": round(float(ms.max()), 2)}


def _probe_node(image_size: int):
    """Node that streams sensors toward franka_bridge and timestamps observations, actions, commands."""
    from geometry_msgs.msg import PoseStamped, TwistStamped
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState

    from vla_rl_ros.msg import ActionBatch, ObservationBatch
    from vla_rl_ros.nodes import qos

    class LatencyProbe(Node):
        def __init__(self) -> None:
            super().__init__("franka_latency_probe")
            self.lock = threading.Lock()
            self.obs_stamp: dict[int, float] = {}
            self.action_time: dict[int, float] = {}
            self.samples: list[tuple[float, float]] = []  # (total, policy part) seconds
            frame = np.random.default_rng(0).integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
            self.image = Image(height=image_size, width=image_size, encoding="rgb8", step=image_size * 3,
                               data=frame.tobytes())
            self.image_pub = self.create_publisher(Image, "camera/image_raw", qos.SENSOR_VIZ)
            self.joint_pub = self.create_publisher(JointState, "joint_states", qos.SENSOR_VIZ)
            self.pose_pub = self.create_publisher(PoseStamped, "eef_pose", qos.SENSOR_VIZ)
            self.create_subscription(ObservationBatch, "observations", self._on_obs, qos.BATCH)
            self.create_subscription(ActionBatch, "actions", self._on_action, qos.BATCH)
            for prefix in ("", "dry_run/"):
                self.create_subscription(TwistStamped, prefix + "command/twist", self._on_command,
                                         qos.COMMAND)
            self.create_timer(1.0 / SENSOR_RATE_HZ, self._stream)

        def _stream(self) -> None:
            stamp = self.get_clock().now().to_msg()
            self.image.header.stamp = stamp
            self.image_pub.publish(self.image)
            self.joint_pub.publish(JointState(name=["panda_finger_joint1", "panda_finger_joint2"],
                                              position=[0.04, 0.04]))
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = stamp, "panda_link0"
            pose.pose.position.x, pose.pose.position.z = 0.5, 0.3
            pose.pose.orientation.x = 1.0
            self.pose_pub.publish(pose)

        def _on_obs(self, msg) -> None:
            with self.lock:
                self.obs_stamp[msg.step_seq] = _seconds(msg.header.stamp)

        def _on_action(self, msg) -> None:
            with self.lock:
                self.action_time[msg.step_seq] = time.time()

        def _on_command(self, msg) -> None:
            now, stamp = time.time(), _seconds(msg.header.stamp)
            with self.lock:
                seq = next((s for s, t in self.obs_stamp.items() if abs(t - stamp) < 1e-9), None)
                if seq is not None and seq in self.action_time:  # a command answering an observation
                    self.samples.append((now - stamp, self.action_time.pop(seq) - stamp))
                    del self.obs_stamp[seq]

    return LatencyProbe()


def measure_deploy_latency(steps: int = 100, warmup: int = 5, policy_size: str = "small",
                           image_size: int = 224, timeout_s: float = 600.0, config: str = "",
                           domain_id: int | None = None, overrides: list[str] | None = None) -> dict:
    """p50/p99 latency (ms) of observation -> command through the deploy graph's policy and franka_bridge."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vla_rl_ros.graph.deploy_franka import build_deploy_graph
    from vla_rl_ros.graph.description import node_command

    graph = build_deploy_graph(mode="eval", armed="false", config=config, log_level="warn")
    # The watchdog would stop the arm between slow CPU decodes; here only the command path is timed.
    ros_overrides = ["-p", f"policy.size:={policy_size}", "-p", "safety.watchdog_timeout_s:=30.0",
                     "-p", "graph.action_timeout_s:=60.0"]
    for item in overrides or []:
        ros_overrides += ["-p", item.replace("=", ":=", 1)]
    # A private DDS domain on loopback: other graphs on this host must not answer or pollute the probe.
    os.environ["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else 100 + os.getpid() % 100)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = dict(os.environ)
    # Node output goes to stderr: stdout carries only the JSON result.
    bridge_only = ["-p", "min_observation_subscribers:=1"]  # no recorder here
    processes = [subprocess.Popen(node_command(spec, graph, sys.executable) + ros_overrides
                                  + (bridge_only if spec.role == "franka_bridge" else []), env=env,
                                  stdout=sys.stderr)
                 for spec in graph.nodes if spec.role in ("franka_bridge", "policy")]
    rclpy.init()
    probe = _probe_node(image_size)
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        while len(probe.samples) < steps + warmup:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"only {len(probe.samples)} of {steps + warmup} steps in {timeout_s} s")
            dead = [p for p in processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a graph node exited with code {dead[0].returncode}")
            time.sleep(0.05)
        samples = list(probe.samples[warmup:warmup + steps])
    finally:
        stop_processes(processes)
        executor.shutdown()
        rclpy.shutdown()
    total = [t for t, _ in samples]
    policy = [p for _, p in samples]
    return {"benchmark": "deploy_latency", "steps": len(samples), "policy_size": policy_size,
            "camera_size": image_size, "observation_to_command": _percentiles(total),
            "observation_to_action_policy": _percentiles(policy),
            "action_to_command_bridge": _percentiles([t - p for t, p in samples]),
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                     "load_avg_1min": round(os.getloadavg()[0], 2)}}


def bench_latency_target(args: argparse.Namespace, cfg) -> dict:
    """``vla-rl bench latency``: the deploy graph's latency with ``cfg.policy.size`` (``--repeats`` steps)."""
    return measure_deploy_latency(steps=max(args.repeats, 20), warmup=max(args.warmup, 1),
                                  policy_size=cfg.policy.size, config=args.config or "",
                                  overrides=list(args.overrides or []))


def main(argv: list[str] | None = None) -> int:
    """Print the latency figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--policy-size", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--image-size", type=int, default=224, help="camera frame side (the bridge resizes)")
    parser.add_argument("--config", default="", help="params YAML ('' = config/franka.yaml)")
    args = parser.parse_args(argv)
    print(json.dumps(measure_deploy_latency(args.steps, args.warmup, args.policy_size, args.image_size,
                                            config=args.config), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
