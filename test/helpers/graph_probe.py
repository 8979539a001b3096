"""A test node that looks at a running ROS graph from outside: node names, parameters (through
each node's parameter services), topics per node, and what is published on chosen topics.

It has an rclpy context of its own, so several can live in one test process one after another;
it joins whatever DDS domain the environment names (see dds_domains.isolate_dds).
"""
from __future__ import annotations

import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient


class GraphProbe:
    """Subscriptions recorded into lists; everything waits by spinning this probe's executor."""

    def __init__(self, ros_args: list[str] | None = None, describe_failure=lambda: ""):
        """``ros_args``: global ROS arguments of the context; ``describe_failure`` adds to timeouts."""
        self.describe_failure = describe_failure
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=["--ros-args", *ros_args] if ros_args else None)
        self.node = Node("graph_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def record(self, msg_type, topic: str, qos) -> list:
        """A list that fills with every ``msg_type`` message received on ``topic``."""
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def add_node(self, node: Node) -> None:
        """Spin another node of this context (e.g. a fake driver) with the probe."""
        self.executor.add_node(node)

    def wait_for(self, predicate, timeout_s: float, what: str):
        """Spin until ``predicate()`` is truthy and return it; after ``timeout_s``, fail naming ``what``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self.executor.spin_once(timeout_sec=0.1)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{self.describe_failure()}")

    def spin_for(self, seconds: float) -> None:
        """Keep receiving for ``seconds`` (lets messages already sent arrive)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.1)

    def node_names(self) -> set[str]:
        """Fully qualified names of every node in the domain but this probe."""
        names = {f"{ns.rstrip('/')}/{name}" for name, ns in self.node.get_node_names_and_namespaces()}
        return names - {self.node.get_fully_qualified_name()}

    def wait_for_nodes(self, expected: set[str], timeout_s: float) -> set[str]:
        """Wait until every node of ``expected`` is in the graph; returns all node names then."""
        return self.wait_for(lambda: expected <= self.node_names() and self.node_names(), timeout_s,
                             f"nodes {sorted(expected)} (seen: {sorted(self.node_names())})")

    def parameters(self, node: str, names: list[str], timeout_s: float = 30.0) -> dict:
        """``{name: value}`` of parameters of the node with fully qualified name ``node``, all declared.

        rclpy starts a node's parameter services before the node's own constructor declares its
        parameters, so an early answer may hold unset (None) values: asked again until none is.
        """
        client = AsyncParameterClient(self.node, node)  # lives as long as the probe: no destroy()
        self.wait_for(client.services_are_ready, timeout_s, f"parameter services of {node}")
        answer: dict = {}

        def all_declared() -> bool:
            future = client.get_parameters(names)
            self.wait_for(future.done, timeout_s, f"parameters {names} of {node}")
            answer.update({n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)})
            return None not in answer.values()
        self.wait_for(all_declared, timeout_s, f"parameters {names} of {node} declared (last: {answer})")
        return answer

    def topics_of(self, node: str) -> tuple[set[str], set[str]]:
        """(published, subscribed) topic names of the node with fully qualified name ``node``, now."""
        namespace, _, name = node.rpartition("/")
        published = self.node.get_publisher_names_and_types_by_node(name, namespace or "/")
        subscribed = self.node.get_subscriber_names_and_types_by_node(name, namespace or "/")
        return {t for t, _ in published}, {t for t, _ in subscribed}

    def wait_for_topics(self, node: str, published: set[str], subscribed: set[str],
                        timeout_s: float = 30.0) -> tuple[set[str], set[str]]:
        """Wait until ``node`` publishes and subscribes at least these; returns all of its topics then.

        Discovery can announce a node before the publishers and subscriptions its constructor makes.
        """
        def present():
            topics = self.topics_of(node)
            return topics if published <= topics[0] and subscribed <= topics[1] else None
        try:
            return self.wait_for(present, timeout_s, f"{node} publishing {sorted(published)} "
                                                     f"and subscribing {sorted(subscribed)}")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{node} (published, subscribed): {self.topics_of(node)}") from None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
