"""`venet attach`: a frontend that shows its device as a tap of its own
(in another namespace), pumped by the same Cython loop as the backend."""
import os
import threading

from venet import abi, placement
from venet.devices import tap as taplib
from venet.devices._pump import Pump


class Attachment:
    def __init__(self, device, tap_name, poll_us=0, cpu=placement.AUTO):
        self.device = device
        self.tap_fd, self.created = taplib.open_tap(tap_name)
        self.tap_name = tap_name
        try:
            taplib.configure(tap_name, mtu=device.mtu, up=True)
            # The same offloads both ways: the kernel may hand our tap's
            # reader what the bridge accepts, and the bridge sends us only
            # what our tap was told to take.
            caps = device.offloads & taplib.supported_offloads(self.tap_fd)
            if caps != device.offloads:
                raise taplib.TapError(f"this kernel's tun lacks offloads "
                                      f"{abi.cap_names(device.offloads & ~caps)} the device negotiated")
            taplib.set_offloads(self.tap_fd, caps)
            self.pin, bulk = placement.pump_args(cpu, device.name, placement.FRONTEND)
            # in = RX ring (frames for our tap), out = TX ring (frames from it)
            self.pump = Pump(device.rx, device.tx, self.tap_fd, poll_us=poll_us,
                             mtu=device.mtu, caps=caps, bulk_cpu=bulk)
        except BaseException:
            os.close(self.tap_fd)
            raise
        self.result = None
        self.thread = threading.Thread(target=self._run, name="attach-pump", daemon=True)

    def _run(self):
        placement.pin_this_thread(self.pin, "the attach pump")
        self.result = self.pump.run()

    def start(self):
        self.thread.start()

    def stop(self):
        self.pump.stop()
        self.thread.join(timeout=5)

    def close(self):
        self.stop()
        os.close(self.tap_fd)
