"""Adversarial capturers against `venet daemon` (no root; a venet-loopback
device): hostile capture memory and doorbells, doorbells whose shared
file description the capturer makes blocking, capturers killed with 8
captures open, many capture cycles, a bus destroyed under a capture;
filters at the checker's and interpreter's limits.

After each, the daemon's descriptors and mappings are back where they
were, the device still moves frames, and the connection that was refused
still works."""
import base64
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys

import pytest

import ioq
from tests.conftest import wait_until
from tests.test_daemon import REPO, DaemonProc, frame
from venet import capture, control, frontend
from venet.devices._capture import FilterError, check_filter, run_filter

ME = os.geteuid()


@pytest.fixture(scope="module")
def dmn():
    d = DaemonProc()
    try:
        d.req("bus-create", name="t")
        d.req("device-create", name="lo0", **{"class": "venet-loopback"})
        d.req("bus-link", bus="t", device="lo0")
        if ME != 0:
            d.req("bus-allow", bus="t", uid=ME)
        yield d
    finally:
        d.cleanup()


def maps(d):
    with open(f"/proc/{d.pid}/maps") as f:
        return sum(1 for _ in f)


def settled(d, fds, nmaps, what):
    """The daemon's descriptors and mappings are back to `fds`, `nmaps`."""
    wait_until(lambda: d.fds() <= fds and maps(d) <= nmaps, 10,
               f"{what}: daemon fds {d.fds()}/{fds}, maps {maps(d)}/{nmaps}")


def captures(d, bus="t"):
    with frontend.connect(d.sock(bus)) as b:
        return b.stats()["devices"][0]["counters"]["captures"]


def moves(d, n=8, bus="t", device="lo0"):
    with frontend.connect(d.sock(bus)) as b:
        dev = b.open(device)
        for i in range(n):
            assert dev.send(frame(80, i), timeout=5)
            assert dev.recv(timeout=5) == frame(80, i)


def request():
    return {"device": "lo0", "snaplen": 128, "direction": "both", "filter": ""}


def good_region(rings=(16,), buf=192):
    return ioq.Region.create(list(rings), buf_size=buf, roles=(1,) * len(rings), name="adv-capture")


def copy_memfd(src, size=None, seal=True):
    """A memfd holding src's bytes (size: its length), sealed or not."""
    data = os.pread(src, os.fstat(src).st_size, 0)
    fd = os.memfd_create("adv-copy", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, len(data) if size is None else size)
    os.pwrite(fd, data[:size], 0)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def hostile(case, tmp):
    """(fds to send, fds to close after, regions to close, reason)."""
    r = good_region()
    fd, pairs = r.handoff()
    prod, cons = pairs[0]           # prod: the backend waits on it (eventfd); cons: it rings (socket)
    closers = []

    def own(x):
        closers.append(x)
        return x
    if case == "unsealed":
        fds = [own(copy_memfd(fd, seal=False)), prod, cons]
        why = "seal"
    elif case == "too_large":
        fds = [own(copy_memfd(fd, size=65 << 20)), prod, cons]
        why = "capture memory refused"
    elif case == "empty":
        fds = [own(copy_memfd(fd, size=0)), prod, cons]
        why = "capture memory refused"
    elif case == "regular_file":
        f = own(os.open(os.path.join(tmp, "region"), os.O_RDWR | os.O_CREAT, 0o600))
        os.pwrite(f, os.pread(fd, os.fstat(fd).st_size, 0), 0)
        fds = [f, prod, cons]
        why = "capture memory refused"
    elif case == "pipe_kick":
        a, b = os.pipe()
        own(a), own(b)
        fds = [fd, prod, b]
        why = "a pipe"
    elif case == "eventfd_kick":
        fds = [fd, prod, own(os.eventfd(0))]
        why = "an eventfd"
    elif case == "socket_wait":
        fds = [fd, cons, cons]
        why = "not an eventfd"
    elif case == "named_socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(os.path.join(tmp, "kick.sock"))
        fds = [fd, prod, own(s.detach())]
        why = "named AF_UNIX socket"
    elif case == "dgram_kick":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        fds = [fd, prod, own(a.detach())]
        own(b.detach())
        why = "datagram socket"
    elif case == "two_fds":
        fds = [fd, prod]
        why = "needs 1 memfd and 1 doorbell pair, got 2"
    elif case == "four_fds":
        fds = [fd, prod, cons, cons]
        why = "needs 1 memfd and 1 doorbell pair, got 4"
    elif case == "memfd_as_doorbell":
        fds = [fd, fd, cons]
        why = "not an eventfd"
    else:
        raise AssertionError(case)
    return fds, closers, [r], why


CASES = ["unsealed", "too_large", "empty", "regular_file", "pipe_kick", "eventfd_kick", "socket_wait",
         "named_socket", "dgram_kick", "two_fds", "four_fds", "memfd_as_doorbell"]


def test_hostile_capture_memory_and_doorbells_are_refused_with_a_reason(dmn, tmp_path):
    moves(dmn)
    fds0, maps0 = dmn.fds(), maps(dmn)
    with frontend.connect(dmn.sock("t")) as bus:
        for case in CASES:
            fds, closers, regions, why = hostile(case, str(tmp_path))
            try:
                with pytest.raises(control.RemoteError, match=why):
                    control.call(bus.sock, control.CAPTURE_START, request(), fds)
            finally:
                for x in closers:
                    os.close(x)
                for r in regions:
                    r.close()
            for name in os.listdir(tmp_path):
                os.unlink(tmp_path / name)
        assert bus.list()[0]["name"] == "lo0"      # the connection stays
    assert captures(dmn) == 0
    settled(dmn, fds0, maps0, "after the refusals")
    moves(dmn)


def test_a_region_with_two_rings_or_unpaired_buffers_is_refused(dmn):
    with frontend.connect(dmn.sock("t")) as bus:
        r = ioq.Region.create([16, 16], buf_size=192, roles=(1, 1))
        try:
            fd, pairs = r.handoff()
            with pytest.raises(control.RemoteError, match="1 eventfd pairs given for 2 rings"):
                control.call(bus.sock, control.CAPTURE_START, request(), [fd, *pairs[0]])
        finally:
            r.close()
        # Fewer buffers than slots: not paired.
        r = ioq.Region.create([16], buf_size=192, nbufs=4, roles=(1,))
        try:
            fd, pairs = r.handoff()
            with pytest.raises(control.RemoteError, match="paired|refused"):
                control.call(bus.sock, control.CAPTURE_START, request(), [fd, *pairs[0]])
        finally:
            r.close()
        assert bus.list()[0]["name"] == "lo0"
    assert captures(dmn) == 0


def test_doorbells_made_blocking_and_never_read_block_no_one(dmn):
    """The capturer clears O_NONBLOCK on the shared file descriptions of
    its doorbells and never reads its ring: the traffic, STATS and the
    capture's stop all go on; the frames the capture could not take are
    counted as its drops."""
    fds0, maps0 = dmn.fds(), maps(dmn)
    with capture.Capture(dmn.sock("t"), "lo0", ring_bytes=0) as cap:
        for fd in cap.region.handoff()[1][0]:
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
        # Fill the kick socket's queue from our side too: the backend's
        # kicks can then only fail, never wait.
        kick = cap.ring.fileno()
        with frontend.connect(dmn.sock("t")) as b:
            dev = b.open("lo0")
            for i in range(600):
                assert dev.send(frame(60 + i % 200, i), timeout=5), f"frame {i} not sent"
                assert dev.recv(timeout=5) == frame(60 + i % 200, i), f"frame {i} not back"
            assert b.stats()["devices"][0]["counters"]["captures"] == 1
        c = cap.stop()
        assert c["seen"] == 1200
        assert c["captured"] + c["dropped"] == c["seen"]
        assert c["captured"] <= capture.MIN_SLOTS
        assert kick >= 0
    wait_until(lambda: captures(dmn) == 0, 5, "the capture detached")
    settled(dmn, fds0, maps0, "after a blocking capturer")


CAPTURER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from venet import capture
caps = [capture.Capture(sys.argv[2], "lo0", ring_bytes=0, filter=f) for f in
        ["", "ether src 02:00:00:00:00:99", "ip", "not arp", "", "", "ether[0] = 2", ""]]
print("ready", flush=True)
time.sleep(60)
"""


def test_capturers_killed_mid_stream_with_8_captures_leave_nothing(dmn):
    moves(dmn)
    fds0, maps0, threads0 = dmn.fds(), maps(dmn), dmn.threads()
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", CAPTURER, str(REPO), dmn.sock("t")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert p.stdout.readline() == b"ready\n", p.stderr.read()
            assert captures(dmn) == 8
            with frontend.connect(dmn.sock("t")) as b:
                dev = b.open("lo0")
                for i in range(200):
                    assert dev.send(frame(100, i), timeout=5)
                    assert dev.recv(timeout=5) == frame(100, i)
                    if i == 100:
                        os.kill(p.pid, signal.SIGKILL)
        finally:
            if p.poll() is None:
                p.kill()
            p.communicate()
        wait_until(lambda: captures(dmn) == 0, 5, f"round {round_}: the captures detached")
    settled(dmn, fds0, maps0, "after 3 killed capturers")
    assert dmn.threads() <= threads0
    moves(dmn)


def test_many_capture_cycles_leak_nothing(dmn):
    with capture.Capture(dmn.sock("t"), "lo0", ring_bytes=0):
        pass                        # the first one loads what the daemon keeps
    fds0, maps0 = dmn.fds(), maps(dmn)
    with frontend.connect(dmn.sock("t")) as b:
        dev = b.open("lo0")
        for i in range(60):
            with capture.Capture(dmn.sock("t"), "lo0", ring_bytes=0, filter="" if i % 2 else "ip") as cap:
                assert dev.send(frame(70, i), timeout=5)
                assert dev.recv(timeout=5) == frame(70, i)
                if i % 3 == 0:
                    cap.stop()      # else: closing the connection detaches it
    settled(dmn, fds0, maps0, "after 60 capture cycles")


def test_a_bus_destroyed_under_a_capture_ends_it(dmn):
    dmn.req("bus-create", name="t2")
    dmn.req("device-create", name="lo2", **{"class": "venet-loopback"})
    try:
        dmn.req("bus-link", bus="t2", device="lo2")
        if ME != 0:
            dmn.req("bus-allow", bus="t2", uid=ME)
        fds0, maps0 = dmn.fds(), maps(dmn)
        cap = capture.Capture(dmn.sock("t2"), "lo2", ring_bytes=0)
        owner = frontend.connect(dmn.sock("t2"))
        try:
            dev = owner.open("lo2")
            assert dev.send(frame(60, 1), timeout=5)
            assert dev.recv(timeout=5) == frame(60, 1)
            assert cap.next(timeout=5) is not None
            dmn.req("bus-destroy", name="t2")
            wait_until(lambda: not cap.poll_control(), 5, "the capturer to hear the end")
        finally:
            owner.close()
            cap.close()
        # The device lives on (it belongs to the registry): link it again.
        dmn.req("bus-create", name="t2")
        dmn.req("bus-link", bus="t2", device="lo2")
        if ME != 0:
            dmn.req("bus-allow", bus="t2", uid=ME)
        moves(dmn, bus="t2", device="lo2")
        dmn.req("bus-destroy", name="t2")
        settled(dmn, fds0, maps0, "after the bus went")
    finally:
        try:
            dmn.req("device-destroy", name="lo2")
        except Exception:
            pass
    moves(dmn)


# ---- filters at the limits ---------------------------------------------------

def insn(code, k=0, jt=0, jf=0):
    return struct.pack("<HBBI", code, jt, jf, k)


RET_A, RET_K, LD_IMM, LDX_IMM, LD_W_ABS, LD_B_IND, DIV_X, MOD_X, LSH_X, RSH_X = (
    0x16, 0x06, 0x00, 0x01, 0x20, 0x50, 0x3c, 0x9c, 0x6c, 0x7c)
JA, JEQ_K = 0x05, 0x15


def test_a_4096_instruction_program_with_jumps_to_its_end():
    n = 4096
    # Every instruction jumps (forward) as far as it may, toward the last one.
    # (jt and jf are 8 bits: as far as 255 ahead, chained to the end.)
    prog = b"".join(insn(JEQ_K, 0, min(255, n - i - 2), min(255, n - i - 2))
                    for i in range(n - 1)) + insn(RET_K, 77)
    check_filter(prog)
    assert run_filter(prog, frame(60)) == 77
    prog = b"".join(insn(JA, n - i - 2) for i in range(n - 1)) + insn(RET_K, 5)
    assert run_filter(prog, frame(60)) == 5
    # One step further leaves the program.
    bad = insn(JA, n - 1) + prog[8:]
    with pytest.raises(FilterError, match="instruction 0: a jump leaves the program"):
        check_filter(bad)
    bad = prog[:-16] + insn(JEQ_K, 0, 1, 0) + insn(RET_K, 1)
    with pytest.raises(FilterError, match=f"instruction {n - 2}: a jump leaves"):
        check_filter(bad)
    with pytest.raises(FilterError, match="at most 4096"):
        check_filter(insn(LD_IMM) * 4096 + insn(RET_K, 1))


@pytest.mark.parametrize("pieces", [1, 3, 16])
def test_loads_past_the_frame_and_division_by_x_zero_take_nothing(pieces):
    f = frame(64)
    for k in (60, 61, 63, 64, 0x7ffffffc, 0x7fffffff):
        prog = insn(LD_W_ABS, k) + insn(RET_K, 1)
        assert run_filter(prog, f, pieces) == (1 if k + 4 <= 64 else 0), k
    # ld [x + k] with x + k wrapping past 2^32 to an offset inside the frame.
    prog = insn(LDX_IMM, 0xffffffff) + insn(LD_B_IND, 0x10) + insn(RET_K, 1)
    assert run_filter(prog, f, pieces) == 0
    prog = insn(LDX_IMM, 0x80000000) + insn(LD_B_IND, 0x7fffffff) + insn(RET_A)
    assert run_filter(prog, f, pieces) == 0
    for op in (DIV_X, MOD_X):
        prog = insn(LD_IMM, 7) + insn(LDX_IMM, 0) + insn(op) + insn(RET_K, 9)
        assert run_filter(prog, f, pieces) == 0
    for op, want in ((LSH_X, 0), (RSH_X, 0)):
        prog = insn(LD_IMM, 0xffffffff) + insn(LDX_IMM, 32) + insn(op) + insn(RET_A)
        assert run_filter(prog, f, pieces) == want
    # The empty frame: every load misses.
    assert run_filter(insn(0x30, 0) + insn(RET_K, 1), b"", 1) == 0
    assert run_filter(insn(0x80) + insn(RET_A), b"", 1) == 0


def test_a_filter_of_4096_instructions_cannot_reach_the_backend_whole(dmn):
    """A request's body is bounded (8 KiB): 4096 instructions in base64 do
    not fit.  The client refuses to send it; sent raw, with the capture's
    fds, the bus drops that connection with a reason, closes the fds, and
    goes on."""
    import json
    n = 4096
    prog = b"".join(insn(JA, 0) for _ in range(n - 1)) + insn(RET_K, 1)
    body = {"device": "lo0", "snaplen": 128, "direction": "both",
            "filter": base64.b64encode(prog).decode()}
    with pytest.raises(ValueError, match="exceeds 8192"):
        control.encode(control.CAPTURE_START, body)
    fds0, maps0 = dmn.fds(), maps(dmn)
    r = good_region()
    try:
        fd, pairs = r.handoff()
        with frontend.connect(dmn.sock("t")) as bus:
            data = json.dumps(body).encode()
            msg = control.HDR.pack(control.MAGIC, control.VERSION, control.CAPTURE_START, len(data)) + data
            bus.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      struct.pack("3i", fd, *pairs[0]))])
            with pytest.raises((control.RemoteError, control.Disconnected, OSError)):
                control.call(bus.sock, control.LIST, {})
    finally:
        r.close()
    settled(dmn, fds0, maps0, "after an oversized request")
    moves(dmn)
    assert captures(dmn) == 0
