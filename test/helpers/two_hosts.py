"""A second "host" on this machine for DDS tests: a network namespace behind a veth link.

Host A is this namespace (the veth's near end gets ``address_a``); host B is a network namespace
(``address_b``) whose processes also get a /dev/shm and a machine id of their own, so that Fast
DDS cannot take its shared-memory shortcut between them: everything between A and B crosses the
veth link as UDP, as between two machines. Needs root, ``ip netns`` and ``unshare``.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def unavailable() -> str:
    """Why two hosts cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth links, mounts)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    probe = f"vlaprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


@dataclass
class TwoHosts:
    """Host B's namespace, the link's addresses and the wrapper that runs a command on host B."""

    namespace: str
    link: str
    address_a: str
    address_b: str
    run_on_b: Path
    """Executable: ``run_on_b PROGRAM ARGS...`` runs PROGRAM on host B."""

    @classmethod
    def create(cls, workdir: Path) -> "TwoHosts":
        """Make host B and the link (10.231.x.0/24, x random); :meth:`remove` undoes it."""
        tag = f"{os.getpid() % 100000}"
        namespace, link, peer = f"vlahostb{tag}", f"vlaa{tag}", f"vlab{tag}"
        subnet = random.SystemRandom().randrange(1, 250)
        a, b = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        hosts = cls(namespace, link, a, b, workdir / "run_on_host_b")
        commands = [["ip", "netns", "add", namespace],
                    ["ip", "link", "add", link, "type", "veth", "peer", "name", peer],
                    ["ip", "link", "set", peer, "netns", namespace],
                    ["ip", "addr", "add", f"{a}/24", "dev", link], ["ip", "link", "set", link, "up"],
                    ["ip", "netns", "exec", namespace, "ip", "addr", "add", f"{b}/24", "dev", peer],
                    ["ip", "netns", "exec", namespace, "ip", "link", "set", peer, "up"],
                    ["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"]]
        try:
            for command in commands:
                subprocess.run(command, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as err:
            hosts.remove()
            raise RuntimeError(f"{' '.join(err.cmd)}: {err.stderr.strip()}") from err
        machine_id = workdir / "machine-id-host-b"
        machine_id.write_text(f"{random.SystemRandom().getrandbits(128):032x}\n")
        hosts.run_on_b.write_text(
            "#!/bin/sh\n# Run \"$@\" on host B: its network namespace, /dev/shm and machine id.\n"
            f"exec ip netns exec {namespace} unshare --mount sh -c 'mount -t tmpfs tmpfs /dev/shm && "
            f"{{ [ ! -e /etc/machine-id ] || mount --bind {machine_id} /etc/machine-id; }} && "
            "exec \"$@\"' sh \"$@\"\n")
        hosts.run_on_b.chmod(0o755)
        return hosts

    def remove(self) -> None:
        """Delete the link and host B (processes still in it should be stopped first)."""
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
