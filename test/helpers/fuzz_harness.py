"""The fuzz tests' harness (one node beside a client node in one executor) and their bad inputs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import rclpy
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from bag_helpers import TINY
from dds_domains import isolate_dds
from vla_rl_ros.core.envs.base import Observation
from vla_rl_ros.core.envs.toy import toy_instruction
from vla_rl_ros.core.policy.lora import META_FILE, WEIGHTS_FILE, sha256_file
from vla_rl_ros.msg import ActionBatch, ObservationBatch
from vla_rl_ros.nodes import convert, qos


class Harness:
    """One node under test and a client node in a private DDS domain, spun from the test."""

    def __init__(self, monkeypatch, factory, **overrides):
        isolate_dds(monkeypatch)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        parameters = [Parameter(k, value=v) for k, v in {**TINY, **overrides}.items()]
        self.node = factory(context=self.context, parameter_overrides=parameters)
        self.client = Node("fuzz_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.extra: list[Node] = []
        for node in (self.node, self.client):
            self.executor.add_node(node)
        self.received: dict[str, list] = {}
        self.pubs: dict[str, object] = {}

    def add(self, node: Node) -> Node:
        self.extra.append(node)
        self.executor.add_node(node)
        return node

    def publisher(self, msg_type, topic, profile=qos.BATCH):
        self.pubs[topic] = self.client.create_publisher(msg_type, topic, profile)
        return self.pubs[topic]

    def listen(self, msg_type, topic, profile=qos.BATCH) -> list:
        self.received[topic] = []
        self.client.create_subscription(msg_type, topic, self.received[topic].append, profile)
        return self.received[topic]

    def spin_until(self, predicate, timeout=30.0) -> bool:
        """Spin until ``predicate()``; an exception of a node's callback propagates (= the node died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            self.executor.spin_once(timeout_sec=0.02)
        return bool(predicate())

    def settle(self, seconds=0.3) -> None:
        self.spin_until(lambda: False, seconds)

    def close(self) -> None:
        self.executor.shutdown()
        for node in [self.node, self.client] + self.extra:
            node.destroy_node()
        rclpy.shutdown(context=self.context)


def observations(seq: int, count: int = 2, size: int = 32, bridge: str = "fuzz", incarnation: int = 7):
    rng = np.random.default_rng(seq)
    obs = [Observation(image=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                       instruction=toy_instruction(i % 2), proprio=np.zeros(8, np.float32), task_id=i % 2,
                       init_state_id=0, step=0) for i in range(count)]
    return convert.observations_to_msg(bridge, seq, list(range(count)), list(range(count)), obs,
                                       incarnation=incarnation)


def bad_observations() -> list[tuple[str, ObservationBatch]]:
    """One malformed ObservationBatch per class: sizes, values, encodings, bounds."""
    cases = []

    def case(name, mutate):
        msg = observations(100 + len(cases))
        mutate(msg)
        cases.append((name, msg))
    case("empty batch", lambda m: (setattr(m, "env_ids", []),))
    case("fewer images than envs", lambda m: setattr(m, "images", m.images[:1]))
    case("duplicate env ids", lambda m: setattr(m, "env_ids", [0, 0]))
    case("NaN proprio", lambda m: setattr(m, "proprio", np.full(16, np.nan, np.float32)))
    case("huge proprio", lambda m: setattr(m, "proprio", np.full(16, 1e30, np.float32)))
    case("proprio length", lambda m: setattr(m, "proprio", np.zeros(3, np.float32)))
    case("unknown task", lambda m: setattr(m, "task_ids", [0, 9]))
    case("empty instruction", lambda m: setattr(m, "instructions", ["", "x"]))
    case("5000-character instruction", lambda m: setattr(m, "instructions", ["pick " * 1000, "x"]))
    case("wrong encoding", lambda m: setattr(m.images[0], "encoding", "mono16"))
    case("wrong step", lambda m: setattr(m.images[0], "step", 5))
    case("truncated pixels", lambda m: setattr(m.images[1], "data", bytes(m.images[1].data)[:100]))
    case("zero-size image", lambda m: (setattr(m.images[0], "height", 0), setattr(m.images[0], "data", b"")))
    oversized = observations(199, size=512)  # 1.5 MB: 200x the frames of this graph
    cases.append(("oversized image", oversized))
    return cases


def bad_actions(reply: ActionBatch, vocab_end: int) -> list[tuple[str, ActionBatch]]:
    """One malformed ActionBatch per class, each a mutated copy of the good ``reply``."""
    cases = []

    def case(name, **fields):
        msg = ActionBatch()
        for slot in reply.get_fields_and_field_types():
            setattr(msg, slot, getattr(reply, slot))
        for key, value in fields.items():
            setattr(msg, key, value)
        cases.append((name, msg))
    width = len(reply.action_tokens)
    case("token id 1e9", action_tokens=np.full(width, 10 ** 9, np.int32))
    case("token beyond the vocabulary", action_tokens=np.full(width, vocab_end, np.int32))
    case("negative token", action_tokens=np.full(width, -5, np.int32))
    case("NaN log-probs", token_log_probs=np.full(width, np.nan, np.float32))
    case("NaN actions", actions=np.full(width, np.nan, np.float32))
    case("inf values", values=np.full(len(reply.values), np.inf, np.float32))
    case("huge actions", actions=np.full(width, 1e6, np.float32))
    case("chunk size 0", chunk_size=0)
    case("chunk size 1000", chunk_size=1000)
    case("wrong action_dim", action_dim=6)
    case("short tokens", action_tokens=np.zeros(3, np.int32))
    case("wrong env ids", env_ids=[5, 6])
    case("no entries", env_ids=[], values=np.zeros(0, np.float32))
    return cases


def good_reply(obs: ObservationBatch, token: int, chunk: int = 1) -> ActionBatch:
    count = len(obs.env_ids)
    return convert.actions_to_msg(obs.bridge_id, obs.step_seq, list(obs.env_ids), 0,
                                  np.full((count, 7 * chunk), token), np.zeros((count, chunk, 7)),
                                  np.full((count, 7 * chunk), -1.0), np.zeros(count), 1.0,
                                  incarnation=obs.incarnation)


# ----------------------------------------------------------------------------- policy
def adapter_files(policy, root: Path) -> list[tuple[str, Path, str]]:
    """(what, adapter directory, announced sha256) of every class of bad adapter file."""
    from safetensors.torch import load_file, save_file
    out = []

    def variant(name, change):
        directory = root / name.replace(" ", "_")
        policy.save_adapters(str(directory), 1)
        change(directory)
        meta = directory / META_FILE
        if meta.read_bytes().startswith(b"{"):  # keep the metadata's checksum matching the weights
            data = json.loads(meta.read_text())
            data["sha256"] = sha256_file(directory / WEIGHTS_FILE)
            meta.write_text(json.dumps(data))
        out.append((name, directory, sha256_file(directory / WEIGHTS_FILE)))

    def nan_weights(d):
        tensors = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(d / WEIGHTS_FILE)).items()}
        save_file(tensors, str(d / WEIGHTS_FILE), metadata={"version": "1"})
    variant("NaN weights with a valid checksum", nan_weights)
    variant("adapter.json a JSON list", lambda d: (d / META_FILE).write_text("[1, 2, 3]"))
    variant("adapter.json not JSON", lambda d: (d / META_FILE).write_bytes(b"\xff\xfe{"))
    variant("garbage safetensors", lambda d: (d / WEIGHTS_FILE).write_bytes(np.random.bytes(4096)))
    variant("truncated safetensors", lambda d: (d / WEIGHTS_FILE).write_bytes(
        (d / WEIGHTS_FILE).read_bytes()[:1000]))

    def bad_version(d):
        data = json.loads((d / META_FILE).read_text())
        data["version"] = "one"
        (d / META_FILE).write_text(json.dumps(data))
    variant("version not an integer", bad_version)
    out.append(("no such directory", root / "missing", ""))
    (root / "a_file").write_text("x")
    out.append(("a file, not a directory", root / "a_file", ""))
    return out
