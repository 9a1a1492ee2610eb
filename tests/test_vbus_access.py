"""Access to a bus: by uid, gid (primary and supplementary), pid and its
descendants (with the start time guarding against pid reuse), deny over
allow, root always.  A fake /proc (tmp_path) makes the corner cases; real
processes check the real /proc."""
import os
import select
import socket
import subprocess
import sys

import pytest

import vbus
from vbus import Creds, Registry
from vbus.access import MAX_DEPTH, lineage, read_groups, read_stat


def fake_proc(root, pid, ppid, start, groups=(), comm="sh"):
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    # fields 3..22 of stat: state, ppid, 16 others, then starttime
    rest = ["S", str(ppid)] + ["0"] * 17 + [str(start), "0", "0"]
    (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest) + "\n")
    (d / "status").write_text(f"Name:\t{comm}\nGroups:\t{' '.join(map(str, groups))} \n")


@pytest.fixture
def proc(tmp_path):
    root = tmp_path / "proc"
    fake_proc(root, 1, 0, 1)
    fake_proc(root, 100, 1, 5000, comm="a) b (c")     # comm with ')' and spaces
    fake_proc(root, 200, 100, 5100, groups=(10, 20, 30))
    fake_proc(root, 300, 200, 5200)
    fake_proc(root, 400, 1, 5300)
    return root


@pytest.fixture
def reg(proc):
    r = Registry(proc=str(proc))
    r.create_bus("b")
    return r


def who(pid, uid=1000, gid=1000, groups=None):
    return Creds(pid=pid, uid=uid, gid=gid, groups=groups)


def test_stat_parsing_survives_odd_names(proc):
    assert read_stat(100, str(proc)) == (1, 5000)
    assert read_stat(999, str(proc)) is None
    assert lineage(300, str(proc)) == [(300, 5200), (200, 5100), (100, 5000), (1, 1)]


def test_nothing_allowed_on_a_new_bus_but_root(reg):
    assert reg.check_access("b", who(400)) == (False, "no rule allows it")
    assert reg.check_access("b", who(400, uid=0)) == (True, "root")


def test_by_uid_and_deny_wins(reg):
    reg.allow("b", uid=1000)
    assert reg.check_access("b", who(400)) == (True, "allowed by uid 1000")
    assert not reg.check_access("b", who(400, uid=1001))[0]
    reg.allow("b", gid=1000)
    reg.deny("b", uid=1000)
    assert reg.check_access("b", who(400)) == (False, "denied by uid 1000")
    assert reg.check_access("b", who(400, uid=7))[0]
    reg.forget("b", uid=1000)
    assert reg.check_access("b", who(400))[0]
    with pytest.raises(vbus.NoSuchRule, match="no rule names uid 1000"):
        reg.forget("b", uid=1000)


def test_root_cannot_be_denied(reg):
    with pytest.raises(vbus.BadValue, match=r"uid 0 \(root\) is always allowed; it cannot be denied"):
        reg.deny("b", uid=0)
    reg.deny("b", gid=0)
    assert reg.check_access("b", who(400, uid=0, gid=0))[0]


@pytest.mark.parametrize("kw,text", [
    ({}, "name exactly one of uid, gid, pid"),
    ({"uid": 1, "gid": 2}, "name exactly one of uid, gid, pid"),
    ({"uid": -1}, "uid must be an integer 0..4294967294"),
    ({"gid": "wheel"}, "gid must be an integer"),
    ({"pid": 0}, "pid must be 1 or more"),
    ({"pid": 999}, "no process 999"),
])
def test_bad_rules_are_refused_and_change_nothing(reg, kw, text):
    before = reg.tree()
    with pytest.raises(vbus.VbusError, match=text):
        reg.allow("b", **kw)
    assert reg.tree() == before


def test_by_gid_primary_and_supplementary(reg):
    reg.allow("b", gid=20)
    assert reg.check_access("b", who(400, gid=20))[0]
    # groups None: read from /proc/PID/status
    assert reg.check_access("b", who(200)) == (True, "allowed by gid 20")
    assert not reg.check_access("b", who(300))[0]
    # groups given (SO_PEERGROUPS): /proc is not read
    assert reg.check_access("b", who(300, groups=(20,)))[0]


def test_by_pid_and_descendants_not_after_pid_reuse(reg, proc):
    reg.allow("b", pid=100)
    assert reg.tree()["buses"]["b"]["access"]["allow"]["pid"] == [{"pid": 100, "start": 5000}]
    assert reg.check_access("b", who(100)) == (True, "allowed by pid 100")
    assert reg.check_access("b", who(300)) == (True, "allowed by descendant of pid 100")
    assert not reg.check_access("b", who(400))[0]
    # pid 100 exits and an unrelated process gets its number: it started later
    fake_proc(proc, 100, 1, 9999)
    assert not reg.check_access("b", who(100))[0]
    assert not reg.check_access("b", who(300))[0]


def test_pid_walk_is_bounded(tmp_path):
    root = tmp_path / "proc"
    fake_proc(root, 1, 0, 1)
    fake_proc(root, 2, 1, 2)
    for pid in range(3, MAX_DEPTH + 10):
        fake_proc(root, pid, pid - 1, pid)
    r = Registry(proc=str(root))
    r.create_bus("b")
    r.allow("b", pid=2)
    assert r.check_access("b", who(10))[0]
    assert not r.check_access("b", who(MAX_DEPTH + 9))[0], "a chain past the bound must fail closed"


def test_a_loop_in_the_parent_chain_ends(tmp_path):
    root = tmp_path / "proc"
    fake_proc(root, 5, 6, 5)
    fake_proc(root, 6, 5, 6)
    assert len(lineage(5, str(root))) == MAX_DEPTH


# --- real processes ----------------------------------------------------------

def test_real_child_and_grandchild_allowed_by_parent_pid_rule_unrelated_not():
    r = Registry()
    r.create_bus("b")
    r.allow("b", pid=os.getpid())
    code = ("import subprocess, sys; p = subprocess.Popen(['cat']); "
            "print(p.pid, flush=True); p.wait()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the child did not start its grandchild in 30 s"
        grandchild = int(child.stdout.readline())
        assert r.check_access("b", who(child.pid, uid=4321, gid=4321, groups=()))[0]
        assert r.check_access("b", who(grandchild, uid=4321, gid=4321, groups=())) == \
            (True, f"allowed by descendant of pid {os.getpid()}")
        # an ancestor of the rule's process is no descendant of it
        assert not r.check_access("b", who(os.getppid(), uid=4321, gid=4321, groups=()))[0]
        assert not r.check_access("b", who(1, uid=4321, gid=4321, groups=()))[0]
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    # the same pid with another start time (as after reuse) allows nothing
    r2 = Registry()
    r2.create_bus("b")
    r2.allow("b", pid=os.getpid(), start=read_stat(os.getpid())[1] + 1)
    assert not r2.check_access("b", who(os.getpid(), uid=4321, gid=4321, groups=()))[0]


def test_creds_from_a_socket_and_groups_from_proc():
    a, b = socket.socketpair()
    try:
        c = Creds.from_socket(a)
    finally:
        a.close()
        b.close()
    assert (c.pid, c.uid, c.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert sorted(c.groups) == sorted(os.getgroups())
    assert sorted(read_groups(os.getpid())) == sorted(os.getgroups())
    assert read_groups(2 ** 22 + 7) == ()
