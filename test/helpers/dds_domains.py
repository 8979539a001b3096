"""A private DDS domain for each test that starts ROS participants.

Every graph test uses the same topic names, so each needs a domain of its own. Ids are stepped
through from a random start instead of drawn at random per test, so that no two tests of one
session share a domain: a node a test SIGKILLs leaves Fast DDS shared-memory port files behind,
and a later participant of the same domain that opens them can stall. The random start keeps two
sessions running at once on one machine apart. Ids stay in 1-101, the range whose DDS ports lie
below Linux's ephemeral ports.
"""
import itertools
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_DOMAIN_ID = 101
_ids = itertools.count(random.SystemRandom().randrange(MAX_DOMAIN_ID))


def fresh_domain_id() -> str:
    """A domain id not handed out before in this session (until 101 have been)."""
    return str(1 + next(_ids) % MAX_DOMAIN_ID)


def loopback_dds_env() -> dict:
    """This process's environment, set for a fresh, loopback-only domain (for child processes)."""
    env = dict(os.environ, ROS_DOMAIN_ID=fresh_domain_id(), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_local.xml"))
    return env


def isolate_dds(monkeypatch) -> str:
    """Put this test (and the processes it starts) in a fresh loopback-only domain; returns its id."""
    env = loopback_dds_env()
    for name in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        monkeypatch.setenv(name, env[name])
    return env["ROS_DOMAIN_ID"]
