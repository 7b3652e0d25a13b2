"""A private network of Linux network namespaces for multi-host end-to-end tests.

One "switch" namespace holds a bridge; each host is a namespace joined to it by a veth
pair (`eth0` in the host, `p-<host>` on the bridge), with addresses from one /24 that
exists only inside these namespaces: nothing is routed anywhere else, and the root
namespace's interfaces are never touched. Namespace names carry the creating process's
pid, so a later run can delete what a crashed run left behind without touching a run
that is still going.

Failures are made the way a network fails:

* `cut(host)` takes the host's bridge port down: the cable is pulled, packets vanish
  silently in both directions (TCP sees only timeouts), and `heal(host)` plugs it back.
* `block(host, peer_ip)` cuts one path only, in both directions: policy rules in the host
  and in the peer's namespace blackhole the packets between the two addresses (other
  peers, and other addresses of the same peer, still get through); `unblock` removes them.

Processes run in a host with `prefix(host)` (`ip netns exec NAME`); a thread of this
process can join a host's network namespace with `enter` (see `HostThreads`), so the
test can be an HTTP client on the network without a route from the root namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

PREFIX = "aexmh"
CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+-")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raises with ip's message when it fails and `check`."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _kill_namespace(name: str) -> None:
    """SIGKILL every process left in namespace `name`, then delete it."""
    pids = ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", name, check=False)


def remove_leftovers() -> list[str]:
    """Delete the namespaces (and their processes) of earlier runs whose process is gone."""
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME.match(name)
        if match is None:
            continue
        owner = int(match.group(1))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(owner, 0)
            continue  # its run is still going
        _kill_namespace(name)
        removed.append(name)
    return removed


def enter(name: str) -> None:
    """Move the calling THREAD into network namespace `name` (sockets it opens live there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class HostThreads(ThreadPoolExecutor):
    """Worker threads that live in one host's network namespace (clients on that host)."""

    def __init__(self, namespace: str, threads: int = 8):
        super().__init__(max_workers=threads, initializer=enter, initargs=(namespace,))


@dataclass
class Network:
    """Hosts (namespaces) on one bridge; `hosts` maps a host to its addresses in `subnet`."""

    hosts: dict[str, list[str]]
    subnet: str = "10.213.77.0/24"
    run: str = field(default_factory=lambda: f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}")
    made: list[str] = field(default_factory=list)
    rules: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.run}-sw"

    def ns(self, host: str) -> str:
        """The namespace of `host`."""
        return f"{self.run}-{host}"

    def prefix(self, host: str) -> list[str]:
        """Command prefix running a program on `host`."""
        return ["ip", "netns", "exec", self.ns(host)]

    def address(self, host: str, index: int = 0) -> str:
        return self.hosts[host][index]

    def up(self) -> Network:
        """Create the switch and every host, linked and addressed; loopback up everywhere."""
        remove_leftovers()
        bits = self.subnet.split("/")[1]
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host, addresses in self.hosts.items():
            ns = self._add_namespace(self.ns(host))
            port = f"p-{host}"
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.switch, "link", "set", port, "master", "br0")
            ip("-n", self.switch, "link", "set", port, "up")
            for address in addresses:
                ip("-n", ns, "addr", "add", f"{address}/{bits}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def _add_namespace(self, name: str) -> str:
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        # Local delivery is decided by the first rule (`lookup local`, pref 0); moved behind
        # the partition rules (pref 100), so those can drop packets addressed to this host.
        ip("-n", name, "rule", "add", "pref", "1000", "lookup", "local")
        ip("-n", name, "rule", "del", "pref", "0")
        return name

    def cut(self, host: str) -> None:
        """Pull the host's cable: its bridge port goes down, every packet to or from it is lost."""
        ip("-n", self.switch, "link", "set", f"p-{host}", "down")

    def heal(self, host: str) -> None:
        """Plug the host's cable back in."""
        ip("-n", self.switch, "link", "set", f"p-{host}", "up")

    def block(self, host: str, peer: str, peer_ip: str) -> None:
        """Drop every packet between `host` and `peer_ip` (an address of `peer`), both ways."""
        for ns, selector in self._block_rules(host, peer, peer_ip):
            ip("-n", ns, "rule", "add", *selector, "blackhole")
            self.rules.append((ns, selector))

    def unblock(self, host: str, peer: str, peer_ip: str) -> None:
        """Let packets between `host` and `peer_ip` through again."""
        for ns, selector in self._block_rules(host, peer, peer_ip):
            ip("-n", ns, "rule", "del", *selector, "blackhole")
            with contextlib.suppress(ValueError):
                self.rules.remove((ns, selector))

    def _block_rules(self, host: str, peer: str, peer_ip: str) -> list[tuple[str, list[str]]]:
        # Each side drops what arrives from the other (TCP only, so ARP still answers): the
        # sender's own routing is untouched and sees no error, only silence, as on a real network.
        host_ip = self.address(host)
        return [
            (self.ns(host), self._ingress(peer_ip, host_ip)),
            (self.ns(peer), self._ingress(host_ip, peer_ip)),
        ]

    @staticmethod
    def _ingress(source: str, destination: str) -> list[str]:
        return [
            "pref",
            "100",
            "from",
            f"{source}/32",
            "to",
            f"{destination}/32",
            "iif",
            "eth0",
            "ipproto",
            "tcp",
        ]

    def down(self) -> None:
        """Delete every namespace made here (killing any process still in one)."""
        for name in reversed(self.made):
            _kill_namespace(name)
        self.made.clear()
        self.rules.clear()
