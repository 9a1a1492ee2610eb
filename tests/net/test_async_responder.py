"""examples/async_responder.py end to end: a venet-tap bridge in a fresh
namespace (tap 10.77.0.1/24), the responder on its device answering for
10.77.0.2; the namespace's ping (ARP first, then ICMP echo) is answered,
on asyncio's loop and on uvloop.  Also the bridge's --metrics endpoint:
it listens in the namespace the bridge was started in (a second fresh one
here, so even the scrape stays inside the test's namespaces), not in the
tap's."""
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab import ROOT, add_addr, ping, run_in

KIP, RIP = "10.77.0.1", "10.77.0.2"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_ping_is_answered_by_the_async_responder(netns, procs, sockdir, loop):
    ns, home = netns(), netns()
    sock = str(sockdir / "bus.sock")
    port = 9101             # the bridge's home namespace is fresh: nothing else listens there
    procs.start([sys.executable, "-m", "venet", "bridge", "--tap", "vt0", "--netns", ns, "--socket", sock,
                 "--metrics", f"127.0.0.1:{port}"], ns=home)
    add_addr(ns, "vt0", KIP)
    procs.start([sys.executable, f"{ROOT}/examples/async_responder.py", "--socket", sock,
                 "--ip", RIP, *(["--uvloop"] if loop == "uvloop" else [])])
    rtts, out = ping(ns, RIP, 3)
    assert len(rtts) == 3, out
    # The bridge counted them, and says so on its metrics endpoint.
    r = run_in(home, [sys.executable, "-c", "import sys, urllib.request; sys.stdout.write(urllib.request."
                      f"urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())"], timeout=30)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert run_in(ns, [sys.executable, "-c", "import urllib.request; urllib.request.urlopen("
                       f"'http://127.0.0.1:{port}/metrics', timeout=5)"], timeout=30).returncode != 0
    frames = {s.labels["direction"]: s.value for f in text_string_to_metric_families(text)
              for s in f.samples if s.name == "venet_device_frames_total"}
    assert frames["tx"] >= 4 and frames["rx"] >= 4     # ARP and 3 echoes each way
