"""A second network namespace on a veth pair, made inside the test's own namespace.

The suite runs in a loopback-only namespace (``unshare -n``). Tests that need a
participant behind a different network (only TCP out, a cut link, a shaped link) give it
a namespace of its own::

    test namespace (lo, 127.0.0.1; veth "outside" 10.203.0.1/30)
        └── veth pair ──► child namespace (lo; veth "inside" 10.203.0.2/30) + nftables

The child namespace belongs to a ``sleep`` process this module starts (``unshare --net``),
so nothing is left in ``/run/netns`` and it disappears with that process, veth included.
Programs enter it with ``nsenter --net=/proc/<pid>/ns/net``; :meth:`Netns.wrapper` writes
a script that does this and then ``exec``\\s a binary, so Playwright can launch Chromium
inside (it starts the browser by ``executable_path`` and talks to it over inherited pipe
file descriptors, which ``nsenter`` and ``exec`` keep).

Nothing here touches the machine's own network: :func:`veth_namespace` refuses to run
where a default route exists (i.e. outside the loopback-only namespace).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
NFT = "/usr/sbin/nft"
NSENTER = "/usr/bin/nsenter"

# nftables for a namespace whose only way out is TCP: every UDP datagram in or out is
# dropped (and counted, so a test can show the rule was hit).
DROP_ALL_UDP = """
table inet roundtable_test {
  chain output {
    type filter hook output priority 0; policy accept;
    meta l4proto udp counter drop
  }
  chain input {
    type filter hook input priority 0; policy accept;
    meta l4proto udp counter drop
  }
}
"""


def _run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, input=input, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass(frozen=True, slots=True)
class Netns:
    """The child namespace: ``inside_ip`` is its address, ``outside_ip`` the test
    namespace's end of the veth pair (reachable from inside)."""

    pid: int
    outside_ip: str
    inside_ip: str
    outside_dev: str
    inside_dev: str
    workdir: Path

    @property
    def path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def enter(self) -> list[str]:
        """The argv prefix that runs a command inside."""
        return [NSENTER, f"--net={self.path}", "--"]

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return _run(*self.enter(), *args, input=input)

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset inside (e.g. :data:`DROP_ALL_UDP`)."""
        self.run(NFT, "-f", "-", input=ruleset)

    def nft_list(self) -> str:
        return self.run(NFT, "list", "ruleset").stdout

    def wrapper(self, binary: str, name: str | None = None) -> Path:
        """An executable script that runs ``binary`` with its arguments inside."""
        script = self.workdir / (name or f"in-netns-{Path(binary).name}")
        script.write_text(
            "#!/bin/sh\n"
            "# Run the program in the test's child network namespace (tests/netns.py).\n"
            f'exec {NSENTER} --net={self.path} -- {binary} "$@"\n'
        )
        script.chmod(0o755)
        return script

    def udp_passes(self, timeout: float = 1.0) -> bool:
        """Does a UDP datagram from inside reach a socket on the outside address?"""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind((self.outside_ip, 0))
            sink.settimeout(timeout)
            port = sink.getsockname()[1]
            code = (
                "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"[s.sendto(b'probe', ({self.outside_ip!r}, {port})) for _ in range(3)]"
            )
            subprocess.run(
                [*self.enter(), sys.executable, "-c", code], capture_output=True, timeout=30
            )
            try:
                sink.recvfrom(64)
            except TimeoutError:
                return False
            return True

    def tcp_passes(self, timeout: float = 5.0) -> bool:
        """Does a TCP connection from inside reach a listener on the outside address?"""
        with socket.socket() as listener:
            listener.bind((self.outside_ip, 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            code = (
                "import socket; "
                f"socket.create_connection(({self.outside_ip!r}, {port}), timeout={timeout})"
            )
            done = subprocess.run(
                [*self.enter(), sys.executable, "-c", code], capture_output=True, timeout=30
            )
            return done.returncode == 0


def _check_isolated() -> None:
    # Creating interfaces where the machine's real routes live would touch its network.
    if _run(IP, "route", "show", "default").stdout.strip():
        pytest.fail(
            "network namespace tests must run inside the loopback-only namespace "
            "(make test, or unshare -n as tests/browser/README.md shows)"
        )


@contextmanager
def veth_namespace(
    workdir: Path,
    outside: str = "10.203.0.1/30",
    inside: str = "10.203.0.2/30",
) -> Iterator[Netns]:
    """A child namespace joined to this one by a veth pair; removed afterwards."""
    for tool in (NSENTER, NFT, shutil.which("unshare") or "/usr/bin/unshare"):
        if not os.path.exists(tool):
            pytest.fail(f"{tool} missing (make system-deps installs util-linux and nftables)")
    _check_isolated()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    outside_dev, inside_dev = f"rto{tag}", f"rti{tag}"
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
    try:
        # unshare creates the namespace, then execs sleep: wait until it is a new one.
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.readlink(f"/proc/{holder.pid}/ns/net") != own:
                    break
            except OSError:
                pass
            if holder.poll() is not None or time.monotonic() > deadline:
                pytest.fail("could not create a network namespace (unshare --net)")
            time.sleep(0.01)
        ns = Netns(
            holder.pid,
            outside.split("/")[0],
            inside.split("/")[0],
            outside_dev,
            inside_dev,
            workdir,
        )
        _run(IP, "link", "add", outside_dev, "type", "veth", "peer", "name", inside_dev)
        _run(IP, "link", "set", inside_dev, "netns", str(holder.pid))
        _run(IP, "addr", "add", outside, "dev", outside_dev)
        _run(IP, "link", "set", outside_dev, "up")
        ns.run(IP, "link", "set", "lo", "up")
        ns.run(IP, "addr", "add", inside, "dev", inside_dev)
        ns.run(IP, "link", "set", inside_dev, "up")
        # Both ends up and past duplicate address detection (IPv4: at once; wait for carrier).
        deadline = time.monotonic() + 10
        while "LOWER_UP" not in ns.run(IP, "link", "show", inside_dev).stdout:
            if time.monotonic() > deadline:
                pytest.fail("veth pair did not come up")
            time.sleep(0.05)
        yield ns
    finally:
        holder.kill()
        holder.wait()
        # The namespace's end went with it; deleting ours is then a no-op, but say so.
        subprocess.run([IP, "link", "del", outside_dev], capture_output=True)


@contextmanager
def shaped_veth_namespace(
    workdir: Path, link: str, shaped: bool = True, index: int = 200
) -> Iterator[tuple[Netns, Any]]:
    """A child namespace behind a shaped link ``link`` (``"300kbit,100ms,2%"``: rate by
    tbf on the outside end, delay each way and downlink loss by netem or, on a kernel
    without it, bench/delayline.py in a router namespace between), as a :class:`Netns`
    (Chromium via ``wrapper``, server reached at ``outside_ip``) and the
    ``bench.link.Links`` that shape it (``lift()``/``shape()``, ``dropped(...)``)::

        with shaped_veth_namespace(tmp_path / "netns", "300kbit,100ms,2%") as (ns, links):
            ...  # run_server(..., {"ROUNDTABLE_MEDIA_HOST": ns.outside_ip}, host="0.0.0.0")
            links.lift()  # the line recovers: rate, delay and loss off
    """
    from bench.link import shaped_namespace

    _check_isolated()
    workdir.mkdir(parents=True, exist_ok=True)
    with shaped_namespace(link, shaped=shaped, index=index) as (links, s):
        ns = Netns(s.holder.pid, s.outside_ip, s.inside_ip, s.outside_dev, s.inside_dev, workdir)
        yield ns, links
