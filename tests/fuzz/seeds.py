"""Write the hand-made seeds of tests/fuzz/corpus/{control,bridge}/ (run
`python3 -m tests.fuzz.seeds`; the files are committed).  The ring and pump
seeds are fuzzer-made inputs picked so that each one reaches different
counters (valid frames, each drop reason, chains, SG lists, TXC events, tap
frames); they are kept as they are.
"""
import json
import os
import struct

from tests.fuzz._runner import CORPUS
from venet import control

# The issue-10 reproducers: one datagram before HELLO that kills the bridge.
DEEP_LIST = b"VN\x01\x01" + struct.pack("<I", 8000) + b"[" * 8000
DEEP_OBJECT = b'{"a":' * 1600
DEEP_OBJECT = b"VN\x01\x01" + struct.pack("<I", len(DEEP_OBJECT)) + DEEP_OBJECT


def js(d):
    return json.dumps(d, separators=(",", ":")).encode()


def control_seeds():
    out = {}
    bodies = {control.HELLO: {"version": 1}, control.LIST: {}, control.OPEN: {"device": "d0"},
              control.NEGCAP: {"device": "d0", "group": 0, "bits": 0x7f},
              control.REGISTER: {"device": "d0"}, control.LINKUP: {"device": "d0"},
              control.LINKDOWN: {"device": "d0"}, control.MACQUERY: {"device": "d0"},
              control.CLOSE: {"device": "d0"}, control.STATS: {}, control.FLUSHRX: {"device": "d0"},
              control.REPLY: {"version": 1, "bus": "default"}, control.ERROR: {"error": "no"},
              control.EVENT: {}}
    for t, b in bodies.items():
        fds = 2 if t == control.REGISTER else 0      # fd kind 2: seven fds
        out[f"valid-{control.NAMES[t]}"] = bytes([0x80 | fds, t]) + js(b)
        out[f"raw-{control.NAMES[t]}"] = bytes([0]) + control.encode(t, b)
    out["deep-list-issue10-1"] = b"\x00" + DEEP_LIST
    out["deep-object-issue10-1"] = b"\x00" + DEEP_OBJECT
    out["empty-datagram"] = b"\x00"
    out["short-header"] = b"\x00VN\x01"
    out["bad-magic"] = b"\x00" + b"XX\x01\x01\x02\x00\x00\x00{}"
    out["bad-version"] = b"\x00" + b"VN\x02\x01\x02\x00\x00\x00{}"
    out["length-mismatch"] = b"\x00" + b"VN\x01\x01\x09\x00\x00\x00{}"
    out["not-an-object"] = bytes([0x80, 1]) + b"[1,2]"
    out["bad-utf8"] = bytes([0x80, 1]) + b'{"a":"\xff"}'
    out["huge-number"] = bytes([0x80, 1]) + b'{"version":' + b"9" * 5000 + b"}"
    out["nan"] = bytes([0x80, 1]) + b'{"version":NaN}'
    out["too-many-fds"] = bytes([0x80 | 5, 5]) + js({"device": "d0"})
    out["max-fds"] = bytes([0x80 | 4, 5]) + js({"device": "d0"})
    out["body-over-max"] = bytes([0x80, 1]) + b"{" + b" " * control.MAX_BODY + b"}"
    return out


def rec(t, body=b"", flags=0):
    return struct.pack("<BBH", flags, t, len(body)) + body


def bridge_seeds():
    out = {}
    hello = rec(control.HELLO, js({"version": 1}))

    def dev(t, name, **kw):
        return rec(t, js({"device": name, **kw}))

    for name, shape in (("d0", 0), ("d0", 1), ("d1", 1)):
        s = hello + rec(control.LIST, js({})) + dev(control.OPEN, name)
        s += dev(control.NEGCAP, name, group=0, bits=0xff) + dev(control.NEGCAP, name, group=1, bits=3)
        s += dev(control.MACQUERY, name) + dev(control.FLUSHRX, name)
        s += rec(control.REGISTER, js({"device": name}), flags=1 | shape << 4)
        s += dev(control.LINKUP, name) + rec(control.STATS, js({})) + dev(control.NEGCAP, name, group=0, bits=1)
        s += dev(control.LINKDOWN, name) + dev(control.LINKUP, name) + dev(control.CLOSE, name)
        out[f"session-{name}-shape{shape}"] = s
    out["session-templated"] = hello + rec(control.OPEN, b"\0", flags=8) + rec(control.NEGCAP, b"\0\0\0\0\0\xff\0\0\0", flags=8) \
        + rec(control.REGISTER, b"\0", flags=8 | 1) + rec(control.LINKUP, b"\0", flags=8)
    out["deep-list-before-hello-issue10-1"] = rec(0, DEEP_LIST, flags=4)
    out["deep-object-after-hello-issue10-1"] = hello + rec(0, DEEP_OBJECT, flags=4)
    # Issue 10 item 2: regions ioq accepts and the pump refuses, LINKUP twice.
    for shape in (2, 3):
        s = b""
        for _ in range(2):
            s += hello + dev(control.OPEN, "d0") + rec(control.REGISTER, js({"device": "d0"}), flags=1 | shape << 4)
            s += dev(control.LINKUP, "d0") + dev(control.CLOSE, "d0")
        out[f"refused-linkup-twice-shape{shape}-issue10-2"] = s
    out["before-hello"] = rec(control.LIST, js({}))
    out["bad-version"] = rec(control.HELLO, js({"version": 2}))
    out["hello-twice"] = hello + hello
    out["fds-with-list"] = hello + rec(control.LIST, js({}), flags=3)
    out["wrong-fds-register"] = hello + dev(control.OPEN, "d0") + rec(control.REGISTER, js({"device": "d0"}), flags=2)
    out["register-twice"] = hello + dev(control.OPEN, "d0") + rec(control.REGISTER, js({"device": "d0"}), flags=1) \
        + rec(control.REGISTER, js({"device": "d0"}), flags=1)
    out["linkup-unregistered"] = hello + dev(control.OPEN, "d0") + dev(control.LINKUP, "d0")
    out["unknown-device"] = hello + dev(control.OPEN, "nope") + dev(control.MACQUERY, "d1")
    out["unknown-type"] = hello + dev(200, "d0")
    out["negcap-while-up"] = hello + dev(control.OPEN, "d0") + rec(control.REGISTER, js({"device": "d0"}), flags=1) \
        + dev(control.LINKUP, "d0") + dev(control.NEGCAP, "d0", group=0, bits=0xffffffff)
    out["field-types"] = hello + rec(control.OPEN, js({"device": 5})) + rec(control.NEGCAP, js({"device": "d0", "group": True}))
    return out


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    write("control", control_seeds())
    write("bridge", bridge_seeds())


if __name__ == "__main__":
    main()
