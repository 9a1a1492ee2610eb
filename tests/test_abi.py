"""docs/abi.md against the built ABI.  The layouts live once, in the C
headers (shmsig_abi.h, ioq_abi.h, venet_abi.h, where _Static_assert holds
every size and offset); ioq._abi and venet._abi export them from the
compiler's sizeof and field offsets.  These tests read the tables of
docs/abi.md and hold them to those exports, so the page cannot drift."""
import os
import re
import socket

import pytest

import ioq
import shmsignal
from ioq import _abi as ioq_abi
from venet import abi

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "abi.md")


@pytest.fixture(scope="module")
def doc():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def table(doc, heading, nth=0):
    """The rows (lists of cells) of the nth table after the line that
    starts with `heading`, header and rule left out."""
    lines = doc.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(heading))
    tables, cur = [], []
    for ln in lines[start + 1:]:
        if ln.startswith("#") and tables + [cur] != [[]]:
            break
        if ln.startswith("|"):
            cur.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur[2:])
            cur = []
    if cur:
        tables.append(cur[2:])
    return tables[nth]


def name(cell):
    """The first `name` of a cell, without an index ([16])."""
    m = re.search(r"`([A-Za-z_]\w*)", cell)
    return m.group(1) if m else cell.split()[0]


def fields(dtype):
    """{name: (offset, size)} of a record dtype."""
    return {n: (off, dt.itemsize) for n, (dt, off, *_) in dtype.fields.items()}


def documented(rows, skip=("padding", "reserved")):
    """{name: (offset, size)} from rows of | off | size | field | ... |."""
    out = {}
    for r in rows:
        n = name(r[2])
        if n in skip:
            continue
        size = r[1].split(" x ")
        out[n] = (int(r[0]), int(size[0]) * (int(size[1]) if len(size) > 1 else 1))
    return out


def test_the_checker_sees_a_wrong_offset():
    rows = [["0", "8", "`cookie`", ""], ["8", "8", "`offset`", ""], ["16", "4", "`len`", ""],
            ["20", "4", "`flags`", ""], ["28", "4", "`user`", ""], ["24", "4", "`seq`", ""]]
    assert documented(rows) != fields(ioq.DESC_DTYPE)


def test_region_header(doc):
    rows = table(doc, "### Region header")
    assert documented(rows) == fields(ioq_abi.REGION_HDR_DTYPE)
    assert f"({ioq.HDR_SIZE} bytes" in doc and ioq_abi.REGION_HDR_DTYPE.itemsize == ioq.HDR_SIZE
    rings = next(r for r in rows if "rings[" in r[2])
    assert f"rings[{ioq.MAX_RINGS}]" in rings[2] and f"1..{ioq.MAX_COUNT}" in rings[3]
    info = ioq_abi.RING_INFO_DTYPE
    assert [(n, info.fields[n][1]) for n in info.names] == [("offset", 0), ("count", 8), ("flags", 12)]
    assert f"`{ioq.MAGIC:#x}`" in rows[0][3]
    assert rows[1][3] == f"`{ioq.VERSION}`"
    assert f"1..{ioq.MAX_RINGS}" in rows[3][3] and f"1..{ioq.MAX_SG_LIMIT}" in rows[4][3]
    assert f"{ioq_abi.POOL_ALIGN}-aligned" in rows[5][3]


def test_ring_header(doc):
    rows = table(doc, "### Ring (")
    got = {name(r[2]) if "`" in r[2] else r[2].split()[0]: int(r[0]) for r in rows}
    assert got["prod"] == ioq.RING_PROD_OFF and got["cons"] == ioq.RING_CONS_OFF
    assert got["shmsignal"] == ioq_abi.RING_SIG_OFF and got["descriptors"] == ioq.RING_HDR_SIZE
    assert f"`{ioq.RING_HDR_SIZE} + {ioq.DESC_SIZE} * count`" in doc
    assert ioq.ring_bytes(256) == ioq.RING_HDR_SIZE + ioq.DESC_SIZE * 256


def test_descriptor_and_sg_entry(doc):
    assert documented(table(doc, "### Descriptor")) == fields(ioq.DESC_DTYPE)
    assert f"### Descriptor ({ioq.DESC_SIZE} bytes)" in doc
    sg = table(doc, "### SG entry")
    assert {name(r[2]): (int(r[0]), int(r[1])) for r in sg} == fields(ioq.SG_DTYPE)
    assert f"### SG entry ({ioq.SG_SIZE} bytes" in doc and f"{ioq_abi.SG_ALIGN}-aligned" in doc
    assert ioq.DESC_STRUCT.size == ioq.DESC_SIZE and ioq.SG_STRUCT.size == ioq.SG_SIZE


def test_consumer_refusals_in_order(doc):
    assert [name(r[0]) for r in table(doc, "### What the consumer checks")] == list(ioq.BAD_REASONS[1:])
    assert ioq.BAD_REASONS[0] == "ok"


def test_popped_item(doc):
    assert f"### Popped item ({ioq.ITEM_DTYPE.itemsize} bytes" in doc
    text = doc[doc.index("### Popped item"):]
    listed = re.search(r"`(u64 cookie[^`]*)`", text).group(1)
    assert [f.split()[1] for f in re.split(r",\s+", listed)] == list(ioq.ITEM_DTYPE.names)


def test_signal_block(doc):
    rows = table(doc, "## shmsignal block")
    assert f"## shmsignal block ({shmsignal.SIZE} bytes, {shmsignal.ALIGN}-aligned)" in doc
    assert f"`{shmsignal.MAGIC:#x}`" in rows[0][2] and f"= {shmsignal.VERSION}" in rows[1][2]
    assert [r[0] for r in rows[2:]] == ["64 + 64*i", "65 + 64*i", "66 + 64*i"]


def test_txc_statuses_and_the_pump_counters(doc):
    rows = table(doc, "Every frame flagged `TXC`")
    assert [(int(r[0]), name(r[1])) for r in rows] == list(enumerate(abi.TXC_STATUS))
    for i, reason in enumerate(abi.META_REASONS[1:], 1):
        assert abi.TXC_STATUS[abi.TXC_META_BASE + i] == "meta_" + reason
    counters = [re.findall(r"`(\w+)`", r[2])[-1] for r in rows]
    assert counters[abi.TXC_META_BASE + 1:abi.TXC_META_BASE + len(abi.META_REASONS)] == \
        ["drop_meta_" + r for r in abi.META_REASONS[1:]]
    # Every counter the table names is one the pump reports.
    from venet.devices._pump import Pump
    region = ioq.Region.create([8, 8], buf_size=2048)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        keys = Pump(region.consumer(abi.RING_TX), region.producer(abi.RING_RX), a.fileno()).stats()
        assert set(counters) <= set(keys), set(counters) - set(keys)
        assert {k for k in keys if k.startswith("drop_meta_")} == {"drop_meta_" + r for r in abi.META_REASONS[1:]}
    finally:
        a.close()
        b.close()
        region.close()


def test_event_and_offload_records(doc):
    assert documented(table(doc, "An event (`venet_event_t`")) == fields(abi.EVENT_DTYPE)
    assert abi.EVENT_STRUCT.size == abi.EVENT_SIZE and f"`venet_event_t`, {abi.EVENT_SIZE} bytes" in doc
    rows = table(doc, "The **offload record**")
    got = {name(r[1]): int(r[0]) for r in rows if "`" in r[1]}
    assert got == {n: off for n, (off, _) in fields(abi.META_DTYPE).items()}
    assert abi.META_STRUCT.size == abi.META_SIZE and f"`venet_meta_t`, {abi.META_SIZE} bytes" in doc


def test_frame_flags(doc):
    rows = table(doc, "Descriptor `flags` bits 16..")
    got = {name(r[1]): eval(r[0].replace("<<", " << ")) for r in rows}
    assert got == {"NEEDS_CSUM": abi.F_NEEDS_CSUM, "GSO": abi.F_GSO, "ECN": abi.F_ECN,
                   "TXC": abi.F_TXC, "MORE": abi.F_MORE}
    assert all(f & ioq.F_USER_MASK == f for f in got.values())


def test_mtu_bounds_have_one_source(doc):
    assert f"MTU is\n{abi.MIN_MTU}..{abi.MAX_MTU}" in doc
    with pytest.raises(ValueError, match=f"out of range {abi.MIN_MTU}..{abi.MAX_MTU}"):
        abi.check_mtu(abi.MAX_MTU + 1)
    assert abi.check_mtu(abi.MIN_MTU) == abi.MIN_MTU
