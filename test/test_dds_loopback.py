"""The shipped Fast DDS profile (config/fastdds_local.xml) keeps DDS on loopback (issue 26).

A node started with it is inspected from outside: its sockets (from /proc/<pid>/fd and
/proc/<pid>/net/{udp,udp6,tcp,tcp6}) must all be bound to loopback. A participant that can only
use the machine's external interface (what another host on the network is) must not discover
it; as a control, it does discover a node on Fast DDS's defaults, which is what issue 26 saw.
Two nodes with the profile still discover each other and exchange a message.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dds_domains import fresh_domain_id

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "fastdds_local.xml"
pytestmark = pytest.mark.skipif(not Path("/proc/self/net/udp").exists(), reason="needs Linux /proc")

NODE = """
import sys, time, rclpy
from rclpy.node import Node
from std_msgs.msg import String
rclpy.init()
node = Node(sys.argv[1])
role, seconds = sys.argv[2], float(sys.argv[3])
got = []
pub = node.create_publisher(String, 'chatter', 10)
node.create_subscription(String, 'chatter', lambda m: got.append(m.data), 10)
print('ready', flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
    if role == 'talker':
        pub.publish(String(data='hello from ' + sys.argv[1]))
    if role == 'listener' and got:
        print('heard', got[0], flush=True)
        break
    if role == 'outsider' and sys.argv[4] in node.get_node_names():
        print('discovered', sys.argv[4], flush=True)
        break
"""


def start_node(name: str, role: str, seconds: float, env: dict, *extra: str) -> subprocess.Popen:
    """A node in its own process (its own DDS participant); returns once it printed 'ready'."""
    process = subprocess.Popen([sys.executable, "-c", NODE, name, role, str(seconds), *extra], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.strip() == "ready", f"{name} did not start: {line!r} {process.stderr.read()}"
    return process


def dds_env(domain: str, discovery_range: str, profile: Path | None = PROFILE) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=domain, ROS_AUTOMATIC_DISCOVERY_RANGE=discovery_range)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def bound_addresses(pid: int) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of every IP socket the process holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    found = set()
    for proto in ("udp", "udp6", "tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{proto}") as table:
            next(table)
            for row in table:
                fields = row.split()
                if fields[9] in inodes:
                    address, port = fields[1].split(":")
                    raw = bytes.fromhex(address)
                    # /proc prints each 32-bit word in host (little-endian) order.
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add((proto, str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


def external_ipv4() -> str | None:
    """An IPv4 address of a non-loopback interface of this machine, if it has one."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:  # SIOCGIFADDR
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # no IPv4 address on this interface
        address = ipaddress.ip_address(packed[20:24])
        if not address.is_loopback:
            return str(address)
    return None


def stop(process: subprocess.Popen) -> str:
    """Stop ``process`` (if still running); returns its stdout + stderr."""
    if process.poll() is None:
        process.terminate()
    out, err = process.communicate(timeout=15)
    return out + err


def test_a_node_with_the_shipped_profile_binds_only_loopback():
    node = start_node("loopback_probe", "talker", 8.0, dds_env(fresh_domain_id(), "SYSTEM_DEFAULT"))
    try:
        seen: set = set()
        deadline = time.monotonic() + 3.0  # send sockets open once discovery starts
        while time.monotonic() < deadline:
            seen |= bound_addresses(node.pid)
            time.sleep(0.2)
    finally:
        output = stop(node)
    assert "XMLPARSER" not in output, f"the profile did not load:\n{output}"  # a bad profile = defaults
    assert len(seen) >= 3, f"expected Fast DDS's UDP sockets, saw {seen}"
    outside = {s for s in seen if not ipaddress.ip_address(s[1]).is_loopback}
    assert not outside, f"sockets bound outside loopback: {sorted(outside)} (all: {sorted(seen)})"


@pytest.mark.parametrize("target", ["defaults_localhost_range", "profile_system_default",
                                    "profile_localhost"])
def test_an_outsider_on_the_external_interface_cannot_discover_a_node(tmp_path, target):
    address = external_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 interface")
    # The outsider may use only the external interface; it probes 32 participant ids there, as
    # other test sessions on this machine may hold the first ids of the domain.
    outsider_profile = tmp_path / "outsider.xml"
    outsider_profile.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns="http://www.eprosima.com"><profiles>
  <transport_descriptors><transport_descriptor>
    <transport_id>external</transport_id><type>UDPv4</type>
    <interfaceWhiteList><address>{address}</address></interfaceWhiteList>
    <maxInitialPeersRange>32</maxInitialPeersRange>
  </transport_descriptor></transport_descriptors>
  <participant profile_name="outsider" is_default_profile="true"><rtps>
    <userTransports><transport_id>external</transport_id></userTransports>
    <useBuiltinTransports>false</useBuiltinTransports>
    <builtin>
      <metatrafficUnicastLocatorList><locator><udpv4><address>{address}</address></udpv4></locator>
      </metatrafficUnicastLocatorList>
      <initialPeersList><locator><udpv4><address>{address}</address></udpv4></locator></initialPeersList>
    </builtin>
  </rtps></participant>
</profiles></dds>
""")
    domain = fresh_domain_id()
    env = {"defaults_localhost_range": dds_env(domain, "LOCALHOST", profile=None),
           "profile_system_default": dds_env(domain, "SYSTEM_DEFAULT"),
           "profile_localhost": dds_env(domain, "LOCALHOST")}[target]
    node = start_node("franka_bridge_stand_in", "talker", 20.0, env)
    outsider = start_node("outsider", "outsider", 5.0,
                          dds_env(domain, "SYSTEM_DEFAULT", profile=outsider_profile),
                          "franka_bridge_stand_in")
    try:
        seen = "".join(outsider.communicate(timeout=30))  # it gives up after 5 s
    finally:
        stop(node)
    assert "XMLPARSER" not in seen, seen
    if target == "defaults_localhost_range":  # the control: what issue 26 found
        assert "discovered franka_bridge_stand_in" in seen
    else:
        assert "discovered" not in seen, f"an outsider on {address} discovered the node:\n{seen}"


def test_two_nodes_with_the_shipped_profile_discover_each_other_and_exchange_a_message():
    env = dds_env(fresh_domain_id(), "SYSTEM_DEFAULT")
    listener = start_node("listener", "listener", 15.0, env)
    talker = start_node("talker", "talker", 15.0, env)
    try:
        heard = listener.communicate(timeout=20)[0]
    finally:
        stop(talker)
    assert "heard hello from talker" in heard
