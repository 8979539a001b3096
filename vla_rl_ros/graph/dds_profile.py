"""Fast DDS profiles for a graph spread over several hosts (bridges on simulator machines).

The shipped ``config/fastdds_local.xml`` keeps every socket on 127.0.0.1: nothing on the network
can discover the nodes. A host that must talk to others gets a profile of its own, written by
:func:`multihost_profile` (``python -m vla_rl_ros.graph.dds_profile ADDRESS PEER...``): shared
memory between the nodes of that host as before, UDP on loopback plus the one interface of the
dedicated robot/cluster network (never every interface), and unicast discovery with the host's
own address and its peers' as initial peers (no multicast). Run the nodes with
``ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT`` so that the profile alone decides
(``LOCALHOST`` would keep discovery on this host). Every process of the host uses the profile,
``ros2`` tools included: discovery traffic goes to the host's network address only, so a
process left on the loopback profile does not see the host's nodes.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys
from xml.sax.saxutils import escape

PARTICIPANT_PROFILE = "vla_rl_ros_multihost"
MAX_PARTICIPANTS_PER_HOST = 32
"""Participant ids probed on every initial peer: room for 32 processes per host and domain."""


def _ipv4(address: str, what: str) -> str:
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError(f"{what} {address!r} is not an IPv4 address") from None
    if parsed.is_unspecified or parsed.is_multicast:
        raise ValueError(f"{what} {address!r}: give the address of one interface, not {parsed}")
    return str(parsed)


def multihost_profile(address: str, peers: list[str]) -> str:
    """The Fast DDS XML profile of a host reachable at ``address`` that talks to ``peers``.

    ``address``: this host's IPv4 address on the dedicated network (the only interface opened
    besides loopback). ``peers``: the other hosts' addresses on that network (or the discovery
    server's). Raises ValueError naming a bad address.
    """
    own = _ipv4(address, "address")
    others = [_ipv4(peer, "peer") for peer in peers]
    if own in others:
        raise ValueError(f"peer {own} is this host's own address")
    if not others:
        raise ValueError("at least one peer: a host without peers needs no network (use fastdds_local.xml)")
    locator = "<locator><udpv4><address>{}</address></udpv4></locator>"
    initial_peers = "\n            ".join(locator.format(escape(a)) for a in [own, *others])
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Fast DDS profile of the host at {escape(own)} in a vla_rl_ros graph over several hosts, written by
     python -m vla_rl_ros.graph.dds_profile. Shared memory between the nodes of this
     host; UDP only on loopback and {escape(own)} (no other interface is bound); discovery by unicast
     to this host and its peers {escape(", ".join(others))} (no multicast). Use it on a dedicated,
     trusted network: every participant there can do what a local process can. -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>network_udp</transport_id>
        <type>UDPv4</type>
        <interfaceWhiteList>
          <address>127.0.0.1</address>
          <address>{escape(own)}</address>
        </interfaceWhiteList>
        <maxInitialPeersRange>{MAX_PARTICIPANTS_PER_HOST}</maxInitialPeersRange>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>shared_memory</transport_id>
        <type>SHM</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="{PARTICIPANT_PROFILE}" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>shared_memory</transport_id>
          <transport_id>network_udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
        <builtin>
          <discovery_config>
            <initialAnnouncements>
              <count>15</count>
              <period><nanosec>100000000</nanosec></period>
            </initialAnnouncements>
            <leaseDuration><sec>10</sec></leaseDuration>
            <leaseAnnouncement><sec>1</sec></leaseAnnouncement>
          </discovery_config>
          <metatrafficUnicastLocatorList>
            {locator.format(escape(own))}
          </metatrafficUnicastLocatorList>
          <initialPeersList>
            {initial_peers}
          </initialPeersList>
        </builtin>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m vla_rl_ros.graph.dds_profile ADDRESS PEER [PEER...]``: print the profile."""
    parser = argparse.ArgumentParser(
        prog="python -m vla_rl_ros.graph.dds_profile",
        description="Print the Fast DDS profile of one host of a vla_rl_ros graph over several hosts; "
                    "point FASTDDS_DEFAULT_PROFILES_FILE at it and run the nodes with "
                    "ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT.")
    parser.add_argument("address", help="this host's IPv4 address on the dedicated robot/cluster network")
    parser.add_argument("peers", nargs="+", metavar="peer",
                        help="the other hosts' addresses on that network (or the discovery server's)")
    args = parser.parse_args(argv)
    try:
        print(multihost_profile(args.address, args.peers), end="")
    except ValueError as err:
        print(f"dds_profile: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
