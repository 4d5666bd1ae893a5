"""fleet2ban.dev.netns: a fleet of namespaces on a bridge, probes, the root-namespace forwarder, teardown."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from fleet2ban.dev.netns import Fleet, TcpListener, cleanup_stale, entered, list_namespaces, try_connect
from fleet2ban.waiting import wait_for

pytestmark = pytest.mark.netns


def test_fleet_hosts_talk_ipv4_and_ipv6_and_teardown_leaves_nothing() -> None:
    with Fleet(tag="ftest") as fleet:
        a = fleet.add_host("a")
        b = fleet.add_host("b")
        names = fleet.namespaces
        assert set(names) <= set(list_namespaces())
        assert all(n.startswith(fleet.token) for n in names)
        with TcpListener(a.ns, 9007) as listener:
            assert try_connect(b.ns, a.ipv4, 9007) is None
            assert try_connect(b.ns, a.ipv6, 9007) is None
            assert try_connect(b.ns, a.ipv4, 9008) == "refused"
            # the accept thread records peers after the client's connect returns
            wait_for(lambda: len(listener.peers) >= 2, 5, "the listener to record both peers", every=0.01)
        assert sorted(listener.peers) == sorted([b.ipv4, b.ipv6])
        proc = b.popen(["sleep", "60"])
    assert not set(names) & set(list_namespaces())
    assert proc.poll() is not None


def test_entered_switches_only_the_calling_thread() -> None:
    with Fleet(tag="ftest") as fleet:
        a = fleet.add_host("a")
        seen: list[str] = []
        go, done = threading.Event(), threading.Event()

        def other() -> None:  # started before the switch: stays in the root namespace
            go.wait(10)
            seen.append(
                subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False).stdout
            )
            done.set()

        t = threading.Thread(target=other)
        t.start()
        with entered(a.ns):
            inside = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False).stdout
            go.set()
            done.wait(10)
        t.join()
        outside = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False).stdout
        assert a.ipv4 in inside
        assert a.ipv4 not in outside and a.ipv4 not in seen[0]


def test_forward_reaches_a_root_namespace_loopback_service() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        conn.sendall(conn.recv(100).upper())
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    with Fleet(tag="ftest") as fleet:
        a = fleet.add_host("a")
        fleet.forward(a, port)
        code = (
            "import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5);"
            "s.sendall(b'hello'); print(s.recv(100).decode())"
        )
        out = a.run([sys.executable, "-c", code, str(port)], capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() == "HELLO", out.stderr
    server.close()


def test_cleanup_stale_removes_only_dead_owners() -> None:
    fleet = Fleet(tag="fstale").start()
    try:
        dead = "fstale999999x0000-x"  # no process 999999 (pid_max is lower)
        subprocess.run(["ip", "netns", "add", dead], check=True)
        removed = cleanup_stale("fstale")
        assert removed == [dead]
        assert fleet.switch in list_namespaces()
    finally:
        fleet.teardown()
        subprocess.run(["ip", "netns", "del", "fstale999999x0000-x"], capture_output=True, check=False)
