"""`--metrics HOST:PORT`: the Prometheus text format, from prometheus_client.

The counters are read when a scraper asks, never per frame.  The HTTP
server runs in prometheus_client's own thread, but the counters live in
objects that the control loop (the daemon's or the bridge's, one thread)
mutates: devices appear and go, a pump's counters are folded into the
device's totals when it stops, connections come and close.  Iterating
those dicts from the HTTP thread could see them change under it, so the
scrape does not read them itself: it asks the control loop for a
snapshot (LoopSnapshot, a pipe the loop's selector watches) and waits
for it, at most SNAPSHOT_TIMEOUT.  The loop builds the snapshot between
two of its own steps, exactly as it answers a STATS request, so no lock is
taken on the loop's side and an idle loop is woken only by a scrape.
The pumps' counters are plain integers each written by its one pump
thread; reading them from the loop thread is what STATS already does.
"""
import ipaddress
import os
import socket
import threading

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

DEFAULT_HOST = "127.0.0.1"
SNAPSHOT_TIMEOUT = 2.0      # seconds a scrape waits for the control loop


def parse_address(text):
    """HOST:PORT, :PORT or PORT (HOST defaults to 127.0.0.1; an IPv6 HOST
    in brackets: [::1]:9101).  Returns (host, port); ValueError with the
    reason."""
    host, port = DEFAULT_HOST, text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"{text!r} is not HOST:PORT (an IPv6 host goes in brackets: [::1]:9101)")
        host, port = text[1:end], text[end + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"{text!r} is not HOST:PORT (an IPv6 host goes in brackets: [::1]:9101)")
        host = host or DEFAULT_HOST
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"{text!r} is not HOST:PORT (the port must be a number)") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} is out of range 0..65535 (0: any free port)")
    return host, p


class LoopSnapshot:
    """Runs fn() in the control loop's thread on behalf of another thread.

    The loop registers this object with its selector (it has a fileno())
    and calls it when readable; take() (any thread) wakes the loop and
    waits for the result.  Answers are numbered: a take() never returns a
    snapshot built before it asked, even after an earlier take() timed
    out."""

    def __init__(self, fn):
        self.fn = fn
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._cond = threading.Condition()
        self._asked = 0
        self._done = 0
        self._result = None
        self._error = None
        self._closed = False
        self._one = threading.Lock()        # one scrape at a time

    def fileno(self):
        return self._r

    def __call__(self):
        """The loop's side: drain the wake-ups, build one snapshot."""
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._cond:
            asked = self._asked
        try:
            result, error = self.fn(), None
        except Exception as e:          # a scrape must not take the loop down
            result, error = None, f"{type(e).__name__}: {e}"
        with self._cond:
            self._result, self._error, self._done = result, error, asked
            self._cond.notify_all()

    def take(self, timeout=SNAPSHOT_TIMEOUT):
        """The snapshot, or raise TimeoutError / RuntimeError."""
        with self._one:
            with self._cond:
                # Under the lock: close() cannot close the pipe (and its
                # number be reused) between the check and the write.
                if self._closed:
                    raise RuntimeError("the control loop has stopped")
                self._asked += 1
                mine = self._asked
                try:
                    os.write(self._w, b"x")
                except BlockingIOError:
                    pass                # the loop has wake-ups pending already
            with self._cond:
                if not self._cond.wait_for(lambda: self._done >= mine or self._closed, timeout):
                    raise TimeoutError(f"the control loop did not answer within {timeout:g} s")
                if self._done < mine:
                    raise RuntimeError("the control loop has stopped")
                if self._error is not None:
                    raise RuntimeError(self._error)
                return self._result

    def close(self):
        """After the loop has stopped: a scrape in progress or later gets
        RuntimeError (venet_scrape_ok 0)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            for fd in (self._r, self._w):
                os.close(fd)


# A device's counters (venet.bridge.Device.stats()) as metric families:
# key -> (family, {label: value}).  Keys not listed are exported one
# family each, venet_device_<key>_total (ring counters with a ring label).
_DIRECTION = {
    "to_tap_frames": ("frames", "tx"), "from_tap_frames": ("frames", "rx"),
    "to_tap_bytes": ("bytes", "tx"), "from_tap_bytes": ("bytes", "rx"),
    "to_tap_gso": ("gso_frames", "tx"), "from_tap_gso": ("gso_frames", "rx"),
    "to_tap_csum": ("csum_frames", "tx"), "from_tap_csum": ("csum_frames", "rx"),
}
_HELP = {
    "frames": "Frames moved by the device's pump (tx: from the frontend to the port; rx: to the frontend)",
    "bytes": "Bytes of the frames moved by the device's pump",
    "gso_frames": "GSO super-frames moved",
    "csum_frames": "Frames with a partial checksum moved",
    "drops": "Frames dropped by the device's pump, by reason",
    "kicks": "Doorbell kicks of the device's rings, by outcome (sent, suppressed, busy, failed)",
}
_COUNTER_HELP = {
    "pumps_wedged": "Pumps whose worker did not let them go in time (a bug): kept, with their memory",
}
_DEVICE_LABELS = ["bus", "device", "class"]


def _name(key):
    return "".join(c if c.isalnum() else "_" for c in key)


def families(snapshot):
    """Metric families of a snapshot: a list of buses, each
    {"bus": name, "control": Bridge.control_stats(),
     "devices": [{"class": CLASS, **Device.stats()}]}."""
    fams = {}

    def fam(name, kind, doc, labels):
        f = fams.get(name)
        if f is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            f = fams[name] = cls(name, doc, labels=labels)
        return f

    for bus in snapshot:
        b = bus["bus"]
        for d in bus["devices"]:
            base = [b, d["device"], d.get("class") or ""]
            fam("venet_device_link_up", "gauge", "1 while the device's link is up",
                _DEVICE_LABELS).add_metric(base, 1 if d["link"] else 0)
            fam("venet_device_open", "gauge", "1 while a frontend holds the device open",
                _DEVICE_LABELS).add_metric(base, 1 if d["busy"] else 0)
            for key, value in sorted(d["counters"].items()):
                if key in _DIRECTION:
                    what, direction = _DIRECTION[key]
                    fam(f"venet_device_{what}", "counter", _HELP[what],
                        _DEVICE_LABELS + ["direction"]).add_metric(base + [direction], value)
                elif key.startswith("drop_"):
                    fam("venet_device_drops", "counter", _HELP["drops"],
                        _DEVICE_LABELS + ["reason"]).add_metric(base + [key[5:]], value)
                elif key.startswith(("in_ring.", "out_ring.")):
                    ring, _, what = key.partition("_ring.")
                    if what.startswith("kicks_"):
                        fam("venet_ring_kicks", "counter", _HELP["kicks"],
                            _DEVICE_LABELS + ["ring", "outcome"]).add_metric(base + [ring, what[6:]], value)
                    else:
                        fam(f"venet_ring_{_name(what)}", "counter",
                            f"Ring counter {what} (ring in: frontend to backend, out: backend to frontend)",
                            _DEVICE_LABELS + ["ring"]).add_metric(base + [ring], value)
                else:
                    doc = _COUNTER_HELP.get(key, f"Device counter {key}")
                    fam(f"venet_device_{_name(key)}", "counter", doc, _DEVICE_LABELS).add_metric(base, value)
        for key, value in sorted((bus.get("control") or {}).items()):
            if key == "connections" or key.startswith("max_"):
                fam(f"venet_control_{_name(key)}", "gauge", f"Control plane: {key.replace('_', ' ')}",
                    ["bus"]).add_metric([b], value)
            else:
                fam(f"venet_control_{_name(key)}", "counter",
                    f"Control plane counter {key} (docs/operating.md)", ["bus"]).add_metric([b], value)
    return list(fams.values())


class VenetCollector:
    """A prometheus_client collector reading a LoopSnapshot at scrape
    time.  venet_scrape_ok is 0 when the control loop did not answer."""

    def __init__(self, snap, timeout=SNAPSHOT_TIMEOUT):
        self.snap = snap
        self.timeout = timeout

    def describe(self):
        return []       # unknown until a scrape: registering must not take a snapshot

    def collect(self):
        ok = GaugeMetricFamily("venet_scrape_ok", "1 when the control loop answered this scrape")
        try:
            snapshot = self.snap.take(self.timeout)
        except (TimeoutError, RuntimeError):
            ok.add_metric([], 0)
            yield ok
            return
        yield from families(snapshot)
        ok.add_metric([], 1)
        yield ok


class MetricsServer:
    """The HTTP endpoint: start() binds HOST:PORT (OSError with the reason
    when it cannot), register the snapshot with the loop's selector
    (`snapshot`), close() stops it."""

    def __init__(self, address, fn):
        self.host, self.port = address
        self.snapshot = LoopSnapshot(fn)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(VenetCollector(self.snapshot))
        self.server = self.thread = None

    def start(self):
        try:
            self.server, self.thread = start_http_server(self.port, self.host, registry=self.registry)
        except socket.gaierror as e:
            raise OSError(f"metrics: cannot resolve {self.host!r}: {e.strerror}") from None
        except OSError as e:
            raise OSError(f"metrics: cannot listen on {self.host}:{self.port}: "
                          f"{e.strerror or e}") from None
        self.port = self.server.server_address[1]      # the one chosen, for port 0
        return self

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.server = None
        self.snapshot.close()


def bus_snapshot(bus, bridge, classes=None):
    """One bus of a snapshot: the control plane's counters and each
    device's (built in the control loop's thread).  classes: device name
    -> class name."""
    devices = []
    for name, dev in list(bridge.devices.items()):
        s = dev.stats()
        s["class"] = (classes or {}).get(name, "venet-tap")
        devices.append(s)
    return {"bus": bus, "control": bridge.control_stats(), "devices": devices}
