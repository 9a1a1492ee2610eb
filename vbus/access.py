"""Who may connect to a bus.

Credentials come from the connecting socket (SO_PEERCRED: pid, uid, gid;
the supplementary groups from SO_PEERGROUPS, else /proc/PID/status).  A
bus's rules allow or deny by uid, by gid (primary or supplementary) and by
pid: that process and its descendants, as vbus membership was inherited
across fork.

The decision, in order:
1. uid 0 (root) is always allowed: the daemon's administrator is root and
   can read every bus anyway; rules cannot deny root.
2. any deny rule that matches refuses;
3. any allow rule that matches allows;
4. otherwise refused.  A new bus has no rules: only root may use it.

Pid rules and pid reuse: a pid rule records the process's start time
(field 22 of /proc/PID/stat, clock ticks since boot) when the rule is
made.  A process matches when it, or an ancestor found by walking the
parent chain (at most MAX_DEPTH hops), has that pid AND that start time.
So when the rule's process exits and its pid is reused, the newcomer does
not match.  A descendant whose ancestor in the rule has exited is
re-parented (to init or a subreaper) and no longer matches either: a pid
rule lasts as long as its process.  The walk reads /proc at the time of
the check; the daemon checks when a connection is made.
"""
import socket
import struct
from dataclasses import dataclass

from .errors import BadValue, LimitReached, NoSuchProcess, NoSuchRule

KINDS = ("uid", "gid", "pid")
MAX_DEPTH = 256
MAX_RULES = 256
MAX_ID = 2 ** 32 - 2   # (uid_t)-1 means "no id"
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
NGROUPS_MAX = 65536


@dataclass(frozen=True)
class Creds:
    """A peer's credentials.  `groups` None: read them from /proc when
    needed."""
    pid: int
    uid: int
    gid: int
    groups: tuple = None

    @classmethod
    def from_socket(cls, sock, proc="/proc"):
        """The credentials of the peer of a connected AF_UNIX socket."""
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        groups = None
        try:
            size = 4 * 64
            while True:
                try:
                    raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
                    break
                except OSError as e:
                    # ERANGE: the buffer was too small for the peer's groups.
                    if e.errno != 34 or size >= 4 * NGROUPS_MAX:
                        raise
                    size *= 4
            groups = tuple(struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))
        except OSError:
            groups = read_groups(pid, proc)
        return cls(pid, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, groups)

    def describe(self):
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


def read_stat(pid, proc="/proc"):
    """(ppid, starttime) of a process, or None when it does not exist (or
    its stat cannot be read)."""
    try:
        with open(f"{proc}/{int(pid)}/stat", "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    # comm, in parentheses, may itself hold spaces and ')': cut at the last.
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 1:].split()
    try:
        # fields[0] is field 3 (state): ppid is field 4, starttime field 22.
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def read_groups(pid, proc="/proc"):
    """The supplementary groups of a process (from /proc/PID/status), or
    () when it cannot be read."""
    try:
        with open(f"{proc}/{int(pid)}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return tuple(int(g) for g in line[7:].split())
    except (OSError, ValueError):
        pass
    return ()


def start_time(pid, proc="/proc"):
    st = read_stat(pid, proc)
    if st is None:
        raise NoSuchProcess(f"no process {pid}")
    return st[1]


def lineage(pid, proc="/proc", depth=MAX_DEPTH):
    """[(pid, starttime)] of the process and its ancestors, nearest first,
    at most `depth` entries; stops at pid 1, 0 or an unreadable process."""
    out = []
    while pid > 0 and len(out) < depth:
        st = read_stat(pid, proc)
        if st is None:
            break
        out.append((pid, st[1]))
        if pid == 1 or st[0] == pid:
            break
        pid = st[0]
    return out


def check_id(kind, value):
    if kind not in KINDS:
        raise BadValue(f"a rule is by uid, gid or pid, not {str(kind)[:20]!r}")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise BadValue(f"{kind} must be an integer 0..{MAX_ID}, not {str(value)[:20]!r}")
    if kind == "pid" and value == 0:
        raise BadValue("pid must be 1 or more")
    return value


class Rules:
    """The access rules of one bus: for each of uid, gid, pid a set of
    allowed and a set of denied ids (a pid maps to its start time).  An id
    is in at most one of its kind's two sets."""

    def __init__(self, proc="/proc"):
        self.proc = proc
        self.allow_ = {k: {} for k in KINDS}
        self.deny_ = {k: {} for k in KINDS}

    def __len__(self):
        return sum(len(s) for s in self.allow_.values()) + sum(len(s) for s in self.deny_.values())

    def _entry(self, kind, value, start):
        check_id(kind, value)
        if kind != "pid":
            return None
        if start is None:
            return start_time(value, self.proc)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise BadValue(f"start time of pid {value} must be an integer 0 or more")
        return start

    def prepare(self, action, kind, value, start=None):
        """Check a change without making it; returns what commit() needs."""
        if action not in ("allow", "deny", "forget"):
            raise BadValue(f"unknown rule action {action!r}")
        check_id(kind, value)
        if action == "forget":
            if value not in self.allow_[kind] and value not in self.deny_[kind]:
                raise NoSuchRule(f"no rule names {kind} {value}")
            return (action, kind, value, None)
        if action == "deny" and kind == "uid" and value == 0:
            raise BadValue("uid 0 (root) is always allowed; it cannot be denied")
        entry = self._entry(kind, value, start)
        new = value not in self.allow_[kind] and value not in self.deny_[kind]
        if new and len(self) >= MAX_RULES:
            raise LimitReached(f"a bus holds at most {MAX_RULES} access rules")
        return (action, kind, value, entry)

    def commit(self, prepared):
        action, kind, value, entry = prepared
        self.allow_[kind].pop(value, None)
        self.deny_[kind].pop(value, None)
        if action == "allow":
            self.allow_[kind][value] = entry
        elif action == "deny":
            self.deny_[kind][value] = entry

    def change(self, action, kind, value, start=None):
        self.commit(self.prepare(action, kind, value, start))

    def _matches(self, table, creds, groups, line):
        if creds.uid in table["uid"]:
            return f"uid {creds.uid}"
        for g in (creds.gid, *groups):
            if g in table["gid"]:
                return f"gid {g}"
        pids = table["pid"]
        if pids:
            for pid, start in line:
                if pids.get(pid, -1) == start:
                    return f"pid {pid}" if pid == creds.pid else f"descendant of pid {pid}"
        return None

    def decide(self, creds):
        """(allowed, why): why names the rule that decided, for a log."""
        if creds.uid == 0:
            return True, "root"
        groups = creds.groups if creds.groups is not None else read_groups(creds.pid, self.proc)
        line = lineage(creds.pid, self.proc) if (self.allow_["pid"] or self.deny_["pid"]) else ()
        why = self._matches(self.deny_, creds, groups, line)
        if why:
            return False, f"denied by {why}"
        why = self._matches(self.allow_, creds, groups, line)
        if why:
            return True, f"allowed by {why}"
        return False, "no rule allows it"

    def allowed(self, creds):
        return self.decide(creds)[0]

    def to_dict(self):
        def side(table):
            return {"uid": sorted(table["uid"]), "gid": sorted(table["gid"]),
                    "pid": [{"pid": p, "start": s} for p, s in sorted(table["pid"].items())]}
        return {"allow": side(self.allow_), "deny": side(self.deny_)}
