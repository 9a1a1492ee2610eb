"""venet.aio against a daemon's loopback devices (no root): recv, async
for, batches, send waiting while the ring is full, cancellation that loses
nothing and sends nothing twice, LinkDown into a waiting coroutine.

Each scenario runs on asyncio's own loop and on uvloop.  The loop is made
per test by asyncio.Runner(loop_factory=...): pytest-asyncio 1.x chooses
loops only through a project-wide hook or a deprecated fixture, and the
choice here concerns this module alone.  A scenario's every wait is
bounded (asyncio.wait_for), so a bug fails the test instead of hanging it.
"""
import asyncio
import os

import numpy as np
import pytest
import uvloop

from tests.test_daemon import DaemonProc, frame
from venet import aio, control
from venet.frontend import LinkDown

LIMIT = 10.0        # seconds any one wait of a scenario may take


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def go(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, 60))
    return go


@pytest.fixture(scope="module")
def dmn():
    d = DaemonProc()
    d.n = 0
    yield d
    d.cleanup()


@pytest.fixture
def loopback(dmn):
    """A fresh bus with one loopback device: (socket path, device name)."""
    dmn.n += 1
    bus, dev = f"b{dmn.n}", f"l{dmn.n}"
    dmn.req("bus-create", name=bus)
    dmn.req("device-create", name=dev, **{"class": "venet-loopback"})
    dmn.req("bus-link", bus=bus, device=dev)
    if os.geteuid() != 0:
        dmn.req("bus-allow", bus=bus, uid=os.geteuid())
    yield dmn.sock(bus), dev
    try:
        dmn.req("device-destroy", name=dev)
        dmn.req("bus-destroy", name=bus)
    except Exception:
        pass


def _link(adev, up):
    """LINKUP/LINKDOWN by hand: with the link down the pump stops and the
    TX ring fills (a running loopback takes every frame, like a wire)."""
    fdev = adev.sync
    with fdev.bus._lock:
        control.call(fdev.bus.sock, control.LINKUP if up else control.LINKDOWN, {"device": fdev.name})


def test_recv_waits_for_a_frame_and_async_for(run, loopback):
    path, name = loopback

    async def scenario():
        async with await aio.connect(path) as bus:
            dev = await bus.open(name)
            waiting = asyncio.ensure_future(dev.recv())
            await asyncio.sleep(0.05)
            assert not waiting.done()           # nothing sent yet: it waits, the loop runs
            assert await asyncio.wait_for(dev.send(frame(60, 1)), LIMIT)
            assert await asyncio.wait_for(waiting, LIMIT) == frame(60, 1)
            assert await dev.recv(timeout=0.05) is None
            sent = [frame(100 + i, i) for i in range(20)]
            for f in sent:
                assert await dev.send(f)
            got = []

            async def take():
                async for f in dev:
                    got.append(f)
                    if len(got) == len(sent):
                        return
            await asyncio.wait_for(take(), LIMIT)
            assert got == sent
            sender = asyncio.ensure_future(dev.send(frame(70, 9)))
            data, meta = await asyncio.wait_for(dev.recv_frame(), LIMIT)
            assert data == frame(70, 9) and meta is None
            assert await sender is True
    run(scenario())


def test_batches(run, loopback):
    path, name = loopback

    async def scenario():
        async with await aio.connect(path) as bus:
            dev = await bus.open(name)
            rows = np.zeros((16, 128), np.uint8)
            lens = np.full(16, 100, np.uint32)
            for i in range(16):
                rows[i, :100] = np.frombuffer(frame(100, i), np.uint8)
            assert await asyncio.wait_for(dev.send_batch(rows, lens), LIMIT) == 16
            out = np.zeros((16, 2048), np.uint8)
            olens = np.zeros(16, np.uint32)
            n = 0
            while n < 16:
                k = await asyncio.wait_for(dev.recv_batch(out[n:], olens[n:]), LIMIT)
                assert k >= 1
                n += k
            assert [bytes(out[i, :olens[i]]) for i in range(16)] == [frame(100, i) for i in range(16)]
            assert await dev.recv_batch(out, olens, timeout=0.05) == 0
    run(scenario())


def test_send_waits_while_the_ring_is_full_and_a_cancelled_send_sends_nothing(run, loopback):
    path, name = loopback

    async def scenario():
        async with await aio.connect(path) as bus:
            dev = await bus.open(name, ring_size=64)
            _link(dev, False)
            queued = 0
            while await dev.send(frame(100, queued), timeout=0):
                queued += 1
            assert queued == 64                 # the ring is full
            cancelled = asyncio.ensure_future(dev.send(frame(100, 200)))
            await asyncio.sleep(0.05)
            assert not cancelled.done()
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            pending = asyncio.ensure_future(dev.send(frame(100, queued)))
            await asyncio.sleep(0.05)
            assert not pending.done()           # waits while full
            _link(dev, True)                    # the pump takes the ring: room
            assert await asyncio.wait_for(pending, LIMIT) is True
            got = []
            while len(got) < queued + 1:
                got.append(await asyncio.wait_for(dev.recv(), LIMIT))
            assert got == [frame(100, i) for i in range(queued + 1)]   # never frame 200
            assert await dev.recv(timeout=0.2) is None
    run(scenario())


def test_a_cancelled_recv_loses_no_frame(run, loopback):
    path, name = loopback

    async def scenario():
        async with await aio.connect(path) as bus:
            dev = await bus.open(name)
            n, got = 300, []
            sender_done = asyncio.Event()

            async def sender():
                for i in range(n):
                    assert await dev.send(frame(80, i))
                    if i % 7 == 0:
                        await asyncio.sleep(0)
                sender_done.set()

            s = asyncio.ensure_future(sender())
            tries = 0
            while len(got) < n and tries < 100000:
                tries += 1
                # Timeouts that often cancel recv() while it waits, or just
                # as its frame arrives.
                try:
                    got.append(await asyncio.wait_for(dev.recv(), 0.0005 * (tries % 5)))
                except asyncio.TimeoutError:
                    pass
            await asyncio.wait_for(s, LIMIT)
            assert got == [frame(80, i) for i in range(n)]
    run(scenario())


def test_link_down_is_raised_into_a_waiting_coroutine(run, loopback, dmn):
    path, name = loopback

    async def scenario():
        bus = await aio.connect(path)
        try:
            dev = await bus.open(name)
            receiver = asyncio.ensure_future(dev.recv())
            await asyncio.sleep(0.05)
            assert not receiver.done()
            loop = asyncio.get_running_loop()
            # The device removed while open: the daemon closes the connection.
            await loop.run_in_executor(None, lambda: dmn.req("device-destroy", name=name))
            with pytest.raises(LinkDown):
                await asyncio.wait_for(receiver, LIMIT)
            with pytest.raises(LinkDown):       # and every later call
                await dev.send(frame(60), timeout=1)
        finally:
            try:
                await bus.close()
            except OSError:
                pass
    run(scenario())


def test_one_receiver_at_a_time(run, loopback):
    path, name = loopback

    async def scenario():
        async with await aio.connect(path) as bus:
            dev = await bus.open(name)
            first = asyncio.ensure_future(dev.recv())
            await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="already in a recv call"):
                await dev.recv()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert await dev.send(frame(60, 5))
            assert await asyncio.wait_for(dev.recv(), LIMIT) == frame(60, 5)
    run(scenario())


def test_connect_errors_are_the_frontends(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no venet bridge socket"):
        run(aio.connect(str(tmp_path / "none.sock")))
