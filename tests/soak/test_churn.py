"""1000 connections and 1000 open/close cycles against one bridge.

The bridge runs with the soft RLIMIT_NOFILE most services get (systemd's
1024).  After a warm-up (50 connections, 50 cycles) its fds, memfds,
eventfds, sockets and threads are counted from /proc and its VmRSS read;
then:
  - 1000 connections one after another (HELLO, LIST, STATS, close);
  - 1000 connections held at once, each saying HELLO, then all closed (a
    bridge that caps connections may refuse some: they are counted, and
    the bridge must stay up and answer);
  - 1000 device open/close cycles (register the memory, link up, close),
    one in ten on a fresh connection that is dropped without CLOSE.
Afterwards every count is back to the warm-up's and VmRSS within 5% of it.

Knobs: SOAK_CONNECTIONS (default 1000), SOAK_CYCLES (default 1000).
"""
import resource
import socket
import sys
import time

import pytest

from venet import control, frontend

from .conftest import drain, env_int, fd_kinds, last_words, rss_kib, same_as, summary, wait_for

pytestmark = pytest.mark.soak

CONNECTIONS = env_int("SOAK_CONNECTIONS", 1000)
CYCLES = env_int("SOAK_CYCLES", 1000)
WARMUP = 50
BRIDGE_NOFILE = 1024


def _connect(path, timeout=10.0):
    """Connect, waiting while the listen backlog is full (the bridge
    accepts at its own pace); the socket then has a 5 s timeout."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.setblocking(False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                s.close()
                raise
            time.sleep(0.001)
        except OSError:
            s.close()
            raise
    s.settimeout(5.0)
    return s


def _cycle(sock, fresh):
    """Open the device, bring it up, close it (or drop the connection)."""
    if fresh:
        bus = frontend.connect(sock)
        bus.open("vb0")
        bus.sock.close()        # gone without CLOSE, memory still registered
        for d in list(bus.devices.values()):
            d.region.close()
        return
    with frontend.connect(sock) as bus:
        dev = bus.open("vb0")
        dev.close()


def settled(pid, sockets, timeout=15):
    """The /proc counts of `pid` once it holds no client connection (as
    many sockets as before the first client came): the bridge drops a
    closed connection when its selector next looks."""
    return wait_for(lambda: (lambda c: c["sockets"] == sockets and c)(fd_kinds(pid)), timeout,
                    f"the bridge to drop every closed connection ({sockets} sockets)")


def test_connections_and_cycles(lab):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = CONNECTIONS + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    a = lab.netns("a")
    sock = lab.socket_path()
    # The cap above what is held at once, so every connection is served
    # (refusals past the cap and at EMFILE: tests/test_control_hostile.py).
    bridge = drain(lab.start(["prlimit", f"--nofile={BRIDGE_NOFILE}:", sys.executable, "-m", "venet",
                        "bridge", "--tap", "vb0", "--netns", a, "--socket", sock,
                        "--max-connections", str(CONNECTIONS + 8),
                        "--max-per-process", str(CONNECTIONS + 8)]))
    pid = bridge.pid
    sockets0 = fd_kinds(pid)["sockets"]       # no client has come yet

    def hold_all():
        """CONNECTIONS connections held at once, each says HELLO; then a
        newcomer must still get its answer.  Returns (answered, refused)."""
        held, answered, refused = [], 0, 0
        try:
            for _ in range(CONNECTIONS):
                try:
                    held.append(_connect(sock))
                except OSError:
                    refused += 1
            for s in held:
                try:
                    control.call(s, control.HELLO, {"version": control.VERSION})
                    answered += 1
                except (OSError, control.RemoteError, control.ProtocolError):
                    refused += 1
            assert bridge.poll() is None, f"the bridge died holding {len(held)} connections: " \
                                          f"{last_words(bridge)}"
            with frontend.connect(sock) as bus:
                bus.list()
        finally:
            for s in held:
                s.close()
        return answered, refused

    # The warm-up reaches every high-water mark the measured run will (the
    # allocator keeps what 1000 live connections once needed): RSS growth
    # after it is what repeating the load costs, which must be none.
    for i in range(WARMUP):
        with frontend.connect(sock) as bus:
            bus.list()
        _cycle(sock, fresh=i % 10 == 0)
    hold_all()
    base = settled(pid, sockets0)
    rss0 = rss_kib(pid)
    t0 = time.monotonic()

    for _ in range(CONNECTIONS):
        with frontend.connect(sock) as bus:
            bus.list()
            bus.stats()
    seq_s = time.monotonic() - t0

    t1 = time.monotonic()
    answered, refused = hold_all()
    burst_s = time.monotonic() - t1

    t2 = time.monotonic()
    for i in range(CYCLES):
        _cycle(sock, fresh=i % 10 == 0)
    cyc_s = time.monotonic() - t2
    assert bridge.poll() is None, f"the bridge died: {last_words(bridge)}"

    check = same_as(base, pid)
    try:
        wait_for(check, 15, "the bridge's fds and threads back to the warm-up's")
    except AssertionError as e:
        raise AssertionError(f"{e}: warm-up {base}, now {check.last}") from None
    rss1 = rss_kib(pid)
    growth = (rss1 - rss0) / rss0
    summary("churn", connections=CONNECTIONS, held_at_once=answered, refused=refused,
            cycles=CYCLES, fds=base["fds"], threads=base["threads"], rss_kib_warm=rss0,
            rss_kib_end=rss1, rss_growth_pct=round(100 * growth, 2),
            seq_conn_per_s=round(CONNECTIONS / seq_s), cycles_per_s=round(CYCLES / cyc_s, 1),
            burst_s=round(burst_s, 2))
    assert abs(growth) <= 0.05, f"VmRSS {rss0} -> {rss1} KiB ({100 * growth:+.1f}%)"
