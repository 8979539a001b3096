"""Rollouts from another host (issue 30): a bridge joins the training graph over the network and leaves.

Host B is a network namespace behind a veth link with its own /dev/shm and machine id
(test/helpers/two_hosts.py), so it reaches host A only as another machine would: UDP over the
link. Checked: with the shipped loopback profile neither side discovers the other; with the
profiles of ``vla-rl dds-profile`` a bridge started on host B in its own namespace (``host_b``)
joins a running toy training graph on host A, its episodes are decoded by A's policy and end in
A's bags; killed, it leaves without stopping anything: the learner keeps publishing versions from
A's own bridge; and it can join again. Discovery through a Fast DDS discovery server works too
(and, once the nodes are its clients, only through it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dds_domains import fresh_domain_id
from two_hosts import TwoHosts, unavailable
from toy_graph_params import write_toy_graph_params
from vla_rl_ros.graph.dds_profile import multihost_profile

ROOT = Path(__file__).resolve().parents[1]
needs_two_hosts = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "ok")

LISTENER = """  # a node that publishes its name and reports the first other name it hears
import sys, time, rclpy
from rclpy.node import Node
from std_msgs.msg import String
rclpy.init()
node = Node(sys.argv[1])
got = []
node.create_subscription(String, 'chatter',
                         lambda m: got.append(m.data) if sys.argv[1] not in m.data else None, 10)
pub = node.create_publisher(String, 'chatter', 10)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
    pub.publish(String(data='hello from ' + sys.argv[1]))
    if got:  # go on talking a little, for the other side to hear this one too
        end = min(end, time.monotonic() + 5.0)
print('heard ' + got[0] if got else 'heard nothing', flush=True)
node.destroy_node()  # in order, as the nodes' runner does: teardown at exit is where DDS hangs
rclpy.try_shutdown()
"""


@pytest.fixture()
def hosts(tmp_path):
    made = TwoHosts.create(tmp_path)
    try:
        yield made
    finally:
        made.remove()


def dds_env(domain: str, profile: Path, discovery_range: str) -> dict:
    return dict(os.environ, ROS_DOMAIN_ID=domain, FASTDDS_DEFAULT_PROFILES_FILE=str(profile),
                ROS_AUTOMATIC_DISCOVERY_RANGE=discovery_range)


def profiles(hosts: TwoHosts, directory: Path) -> tuple[Path, Path]:
    a, b = directory / "fastdds_host_a.xml", directory / "fastdds_host_b.xml"
    a.write_text(multihost_profile(hosts.address_a, [hosts.address_b]))
    b.write_text(multihost_profile(hosts.address_b, [hosts.address_a]))
    return a, b


def chat(hosts: TwoHosts, domain: str, profile_a: Path, range_a: str, profile_b: Path, range_b: str,
         seconds: float) -> tuple[str, str]:
    """A node on each host publishes and listens on 'chatter'; what each heard."""
    command = [sys.executable, "-c", LISTENER]
    on_a = subprocess.Popen([*command, "node_a", str(seconds)], stdout=subprocess.PIPE, text=True,
                            env=dds_env(domain, profile_a, range_a))
    on_b = subprocess.Popen([str(hosts.run_on_b), *command, "node_b", str(seconds)],
                            env=dds_env(domain, profile_b, range_b), stdout=subprocess.PIPE, text=True)
    return tuple(heard(node, seconds + 60) for node in (on_a, on_b))


def heard(node: subprocess.Popen, timeout: float) -> str:
    """What a chat node printed; one that printed it but hangs on the way out is killed.

    Fast DDS can hang tearing a participant down at exit (CI saw it: 'heard hello from node_b'
    printed, then no exit for 90 s; eProsima/Fast-DDS issues 235, 1921). Discovery, not teardown,
    is what these tests check, so the line printed before the hang is the answer.
    """
    try:
        return node.communicate(timeout=timeout)[0].strip()
    except subprocess.TimeoutExpired:
        node.kill()
        return node.communicate(timeout=30)[0].strip()


def test_a_chat_node_that_hangs_after_answering_still_answers():
    answers_then_hangs = "import time; print('heard x', flush=True); time.sleep(600)"
    stuck = subprocess.Popen([sys.executable, "-c", answers_then_hangs], stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    assert heard(stuck, 3) == "heard x"
    assert stuck.poll() is not None and time.monotonic() - started < 30


def test_the_profile_opens_one_interface_and_names_the_peers():
    import xml.etree.ElementTree as ElementTree
    ns = {"dds": "http://www.eprosima.com"}
    root = ElementTree.fromstring(multihost_profile("192.168.7.2", ["192.168.7.3", "192.168.7.4"]))
    assert [a.text for a in root.iterfind(".//dds:interfaceWhiteList/dds:address", ns)] == \
        ["127.0.0.1", "192.168.7.2"]
    assert [a.text for a in root.iterfind(".//dds:initialPeersList//dds:address", ns)] == \
        ["192.168.7.2", "192.168.7.3", "192.168.7.4"]
    assert [a.text for a in root.iterfind(".//dds:metatrafficUnicastLocatorList//dds:address", ns)] == \
        ["192.168.7.2"]
    assert root.find(".//dds:useBuiltinTransports", ns).text == "false"
    for address, peers, message in (("0.0.0.0", ["10.0.0.2"], "one interface"), ("10.0.0.1", [], "one peer"),
                                    ("10.0.0.1", ["10.0.0.1"], "own address"),
                                    ("host", ["10.0.0.2"], "IPv4")):
        with pytest.raises(ValueError, match=message):
            multihost_profile(address, peers)


def test_a_host_starts_only_its_part_of_the_graph():
    from vla_rl_ros.graph.description import build_graph
    (bridge,) = build_graph("train_sim", only="sim_bridge", bridge_namespace="host_b").nodes
    assert (bridge.role, bridge.namespace) == ("sim_bridge", "host_b")
    assert bridge.parameters["bridge_id"] == "host_b"
    assert ("observations", "/observations") in bridge.remappings
    assert bridge.parameters["min_observation_subscribers"] == 2  # the policy and recorder on host A
    nodes = build_graph("train_sim", only="sim_bridge,policy,recorder", num_bridges="2",
                        bridge_namespace="host_c").nodes
    assert [(n.role, n.namespace) for n in nodes] == [("sim_bridge", "host_c_0"), ("sim_bridge", "host_c_1"),
                                                      ("policy", ""), ("recorder", "")]
    for arguments, message in (({"only": "learner,dancer"}, "roles of the train_sim graph"),
                               ({"bridge_namespace": "host-b"}, "letters, digits and underscores")):
        with pytest.raises(ValueError, match=message):
            build_graph("train_sim", **arguments)


@needs_two_hosts
@pytest.mark.slow
def test_hosts_meet_only_through_the_multihost_profiles(hosts, tmp_path):
    local = ROOT / "config" / "fastdds_local.xml"
    profile_a, profile_b = profiles(hosts, tmp_path)
    # Shipped default on host A: a host B set up to find A still cannot (A stays on loopback).
    assert chat(hosts, fresh_domain_id(), local, "LOCALHOST", profile_b, "SYSTEM_DEFAULT", 8) == \
        ("heard nothing", "heard nothing")
    # Both on their multi-host profiles: they meet over the link.
    assert chat(hosts, fresh_domain_id(), profile_a, "SYSTEM_DEFAULT", profile_b, "SYSTEM_DEFAULT", 30) == \
        ("heard hello from node_b", "heard hello from node_a")


WATCHER = """  # host A's view of the graph: one line per EpisodeResult (its bridge) and PolicyVersion
import sys, rclpy
from rclpy.node import Node
from vla_rl_ros.graph import topics
from vla_rl_ros.msg import EpisodeResult, PolicyVersion
from vla_rl_ros.nodes import qos
rclpy.init()
node = Node('multihost_watcher')
out = open(sys.argv[1], 'a', buffering=1)
node.create_subscription(EpisodeResult, topics.EPISODE_RESULTS,
                         lambda m: out.write(f'result {m.bridge_id}\\n'), qos.BATCH)
node.create_subscription(PolicyVersion, topics.POLICY_VERSION,
                         lambda m: out.write(f'version {m.version}\\n'), qos.LATCHED)
rclpy.spin(node)
"""


@needs_two_hosts
@pytest.mark.slow
def test_a_bridge_on_another_host_joins_and_leaves_while_training_goes_on(hosts, tmp_path):
    from vla_rl_ros.cli.launch_cmd import Supervisor
    from vla_rl_ros.graph.description import build_graph, node_command

    profile_a, profile_b = profiles(hosts, tmp_path)
    domain = fresh_domain_id()
    config = write_toy_graph_params(tmp_path, episodes_per_iter=2, action_timeout_s=5.0)
    logs = tmp_path / "logs"
    logs.mkdir()
    # Every process of host A, the watcher included, runs on host A's profile. (Not this test
    # process: Fast DDS reads a process's profile file once, and an earlier test may have.)
    env_a = dds_env(domain, profile_a, "SYSTEM_DEFAULT")
    host_a = Supervisor(build_graph("train_sim", config=str(config)), log_dir=str(logs))

    # What `vla-rl launch train_sim only:=sim_bridge bridge_namespace:=host_b` starts on host B.
    rollout_host = build_graph("train_sim", config=str(config), only="sim_bridge",
                               bridge_namespace="host_b")
    (remote,) = rollout_host.nodes
    remote_command = node_command(remote, rollout_host, sys.executable)

    def start_remote(log: str) -> subprocess.Popen:
        with open(logs / log, "ab") as out:
            return subprocess.Popen([str(hosts.run_on_b), *remote_command], stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dds_env(domain, profile_b, "SYSTEM_DEFAULT"))

    seen = tmp_path / "seen.txt"
    seen.touch()

    def lines(kind: str) -> list[str]:
        return [line.split(" ", 1)[1] for line in seen.read_text().splitlines()
                if line.startswith(kind + " ")]

    def version() -> int:
        return max(map(int, lines("version")), default=0)

    def episodes(bridge: str) -> int:
        return sum(b == bridge for b in lines("result"))

    def local_episodes() -> int:
        return sum(b != "host_b" for b in lines("result"))

    def wait_for(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                tails = "".join(f"\n--- {log.name}:\n"
                                + "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                                for log in sorted(logs.glob("*.log")))
                raise AssertionError(f"timed out after {timeout} s waiting for {what}{tails}")
            time.sleep(0.2)

    remote_bridge = watcher = None
    previous = dict(os.environ)
    os.environ.update(env_a)  # what the Supervisor passes to host A's nodes
    try:
        host_a.start()
        with open(logs / "watcher.log", "ab") as errors:
            watcher = subprocess.Popen([sys.executable, "-c", WATCHER, str(seen)], env=env_a,
                                       stdout=subprocess.DEVNULL, stderr=errors)
        wait_for(lambda: version() >= 1, 240, "policy version 1 from host A's own bridge")

        # Join mid-run: host B's episodes are decoded by host A's policy (they could not end otherwise).
        remote_bridge = start_remote("host_b_sim_bridge.log")
        wait_for(lambda: episodes("host_b") >= 2, 180, "two episodes of the bridge on host B")

        # Leave without a goodbye (power cut): training goes on from host A's bridge.
        os.killpg(remote_bridge.pid, signal.SIGKILL)
        remote_bridge.wait(timeout=30)
        before, local_before = version(), local_episodes()
        wait_for(lambda: version() >= before + 2, 240, "two more policy versions after host B left")
        assert local_episodes() > local_before
        assert all(process.poll() is None for _, process in host_a.processes.values()), "a node on A died"

        # And join again.
        count = episodes("host_b")
        remote_bridge = start_remote("host_b_sim_bridge_again.log")
        wait_for(lambda: episodes("host_b") >= count + 2, 180, "episodes of host B after it joined again")
        bags = tmp_path / "run" / "bags"
        complete = [b for b in bags.glob("iter_*") if (b / "metadata.yaml").is_file()]
        assert any(b"host_b" in (b / f"{b.name}.mcap").read_bytes() for b in complete), "no bag of host B"
    finally:
        os.environ.clear()
        os.environ.update(previous)
        if remote_bridge is not None and remote_bridge.poll() is None:
            os.killpg(remote_bridge.pid, signal.SIGKILL)
            remote_bridge.wait(timeout=30)
        if watcher is not None:
            watcher.kill()
            watcher.wait(timeout=30)
        host_a.stop(grace_s=10.0)


def discovery_server(address: str) -> subprocess.Popen | None:
    """A Fast DDS discovery server on ``address``:11811 (the wheels' binary; None without it).

    ``fastdds discovery -l ADDRESS`` starts the same program in a ROS 2 installation; in this
    environment that wrapper lacks psutil and the binary its library path, given here.
    """
    import sysconfig
    binary = Path(sys.executable).parent / "fast-discovery-server"
    if not binary.is_file():
        return None
    libraries = [Path(sys.prefix) / "lib", Path(sysconfig.get_paths()["purelib"]) / "ros_fastdds.libs"]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(p) for p in libraries))
    # 42: the server command of the binary (what the fastdds wrapper passes).
    server = subprocess.Popen([str(binary), "42", "-l", address, "-p", "11811"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = server.stdout.readline()
    if "Server started" not in line:
        server.kill()
        return None
    return server


@needs_two_hosts
@pytest.mark.slow
def test_hosts_meet_through_a_discovery_server(hosts, tmp_path, monkeypatch):
    profile_a, profile_b = profiles(hosts, tmp_path)
    monkeypatch.setenv("ROS_DISCOVERY_SERVER", f"{hosts.address_a}:11811")
    # Clients of a server discover only through it: none running, nobody meets.
    assert chat(hosts, fresh_domain_id(), profile_a, "SYSTEM_DEFAULT", profile_b, "SYSTEM_DEFAULT", 8) == \
        ("heard nothing", "heard nothing")
    server = discovery_server(hosts.address_a)
    if server is None:
        pytest.skip("no working fast-discovery-server binary in this environment")
    try:
        heard = chat(hosts, fresh_domain_id(), profile_a, "SYSTEM_DEFAULT", profile_b, "SYSTEM_DEFAULT", 30)
        assert heard == ("heard hello from node_b", "heard hello from node_a")
    finally:
        server.terminate()
        server.wait(timeout=10)
