"""Worker "hosts" for multi-host tests: Linux network namespaces on a private bridge.

Each host is a network namespace (``ip netns``) with its own loopback and a veth whose other
end sits on a bridge in the test's namespace. The bridge has one address (``host_ip``) that is
local to the test machine, so servers bound to it are reachable from every namespace and from
nothing outside the machine. Needs root (CI runs as root). Everything made here is named
``shears-<pid>-…``; leftovers of a killed test run (pid gone) are removed on the next start.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import selectors
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

PREFIX = "shears-"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    try:
        _ip("netns", "list")
    except (OSError, subprocess.CalledProcessError) as error:
        return f"`ip netns` does not work here: {error}"
    return None


def _remove_leftovers() -> None:
    """Namespaces and bridges of earlier runs whose test process is gone."""
    names = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]
    links = re.findall(r"^\d+: ([^:@]+)", _ip("-o", "link", "show").stdout, flags=re.M)
    for name in names + links:
        match = re.match(r"(?:shears-|shbr)(\d+)", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            if name in names:
                _ip("netns", "delete", name, check=False)
            else:
                _ip("link", "delete", name, check=False)


def _free_subnet() -> str:
    """A 10.213.x.0/24 no interface of this machine uses yet."""
    used = _ip("-4", "-o", "addr", "show").stdout
    for _ in range(200):
        third = random.randint(1, 254)
        if f" 10.213.{third}." not in used:
            return f"10.213.{third}"
    raise RuntimeError("no free 10.213.x.0/24 subnet for the test bridge")


@dataclass
class Hosts:
    """``names``: the namespaces; ``host_ip``: the bridge address servers bind to."""

    bridge: str
    host_ip: str
    names: list[str] = field(default_factory=list)

    def argv(self, host: str, command: list[str]) -> list[str]:
        """``command`` run inside the namespace ``host``."""
        return ["ip", "netns", "exec", host, *command]


@contextlib.contextmanager
def hosts(count: int) -> Iterator[Hosts]:
    """``count`` namespaces on one bridge; all of it is deleted on exit, whatever happened."""
    _remove_leftovers()
    pid = os.getpid()
    subnet = _free_subnet()
    made = Hosts(bridge=f"shbr{pid}"[:15], host_ip=f"{subnet}.1")
    try:
        _ip("link", "add", made.bridge, "type", "bridge")
        _ip("addr", "add", f"{made.host_ip}/24", "dev", made.bridge)
        _ip("link", "set", made.bridge, "up")
        for index in range(count):
            name = f"{PREFIX}{pid}-{chr(ord('a') + index)}"
            veth = f"shv{pid}{chr(ord('a') + index)}"[:15]
            _ip("netns", "add", name)
            made.names.append(name)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", veth, "master", made.bridge, "up")
            _ip("-n", name, "addr", "add", f"{subnet}.{index + 2}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield made
    finally:
        for name in made.names:
            _ip("netns", "delete", name, check=False)  # takes its end of the veth, and so the pair
        _ip("link", "delete", made.bridge, check=False)


class TcpRelay:
    """Listens on ``(host, port)`` and relays each connection to ``target``: makes a server
    that listens on loopback only (the machine's PostgreSQL) reachable on the bridge."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.address = self.listener.getsockname()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    try:
                        upstream = socket.create_connection(self.target, timeout=10)
                    except OSError:
                        client.close()
                        continue
                    for a, b in ((client, upstream), (upstream, client)):
                        a.setblocking(False)
                        self._peers[a] = b
                        self._selector.register(a, selectors.EVENT_READ)
                    continue
                self._pump(sock)  # type: ignore[arg-type]

    def _pump(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        try:
            data = sock.recv(1 << 16)
            if data and peer is not None:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
        except OSError:
            pass
        for end in (sock, peer):  # one side closed: close both
            if end is not None and end in self._peers:
                self._selector.unregister(end)
                self._peers.pop(end)
                end.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in list(self._peers):
            sock.close()
        self.listener.close()
