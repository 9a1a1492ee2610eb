"""`venet attach`: a frontend that shows its device as a tap of its own
(in another namespace), pumped by the same Cython loop as the backend.

The tap outlives the bridge: when the bridge goes away the pump stops and
the tap's carrier goes off (it keeps its addresses and routes); when the
device is open again (in new memory) a new pump runs on the same tap fd
and the carrier comes back on."""
import logging
import os
import threading

from venet import abi, placement
from venet.devices import tap as taplib
from venet.devices._pump import Pump

log = logging.getLogger("venet.attach")


class Attachment:
    def __init__(self, device, tap_name, poll_us=0, cpu=placement.AUTO):
        self.device = device
        self.tap_fd, self.created = taplib.open_tap(tap_name)
        self.tap_name = tap_name
        self.poll_us = poll_us
        self.cpu = cpu
        self.mtu = device.mtu
        self.pump = None
        self.thread = None
        self.result = None
        try:
            taplib.configure(tap_name, mtu=device.mtu, up=True)
            self._prepare()
        except BaseException:
            os.close(self.tap_fd)
            raise

    def _prepare(self):
        """The tap's offloads and a pump for the device's current rings."""
        device = self.device
        # The same offloads both ways: the kernel may hand our tap's
        # reader what the bridge accepts, and the bridge sends us only
        # what our tap was told to take.
        caps = device.offloads & taplib.supported_offloads(self.tap_fd)
        if caps != device.offloads:
            raise taplib.TapError(f"this kernel's tun lacks offloads "
                                  f"{abi.cap_names(device.offloads & ~caps)} the device negotiated")
        taplib.set_offloads(self.tap_fd, caps)
        self.pin, bulk = placement.pump_args(self.cpu, device.name, placement.FRONTEND)
        # in = RX ring (frames for our tap), out = TX ring (frames from it)
        try:
            self.pump = Pump(device.rx, device.tx, self.tap_fd, poll_us=self.poll_us,
                             mtu=device.mtu, caps=caps, bulk_cpu=bulk)
        except (ValueError, OSError) as e:
            # The bridge's device does not fit our pump (its ring too small
            # for its frames): a plain error, as for the tap.
            raise taplib.TapError(f"device {device.name}: {e}") from None
        self.result = None
        self.thread = threading.Thread(target=self._run, name="attach-pump", daemon=True)

    def _run(self):
        placement.pin_this_thread(self.pin, "the attach pump")
        self.result = self.pump.run()

    def start(self):
        self.thread.start()

    def running(self):
        return self.thread is not None and self.thread.is_alive()

    def stop(self):
        """Stop the pump and wait for it; True once it no longer runs (only
        then may the device's memory go)."""
        if self.pump is None:
            return True
        self.pump.stop()
        if self.thread.ident is not None:
            self.thread.join(timeout=5)
            if self.thread.is_alive():
                return False
        self.pump = None
        return True

    def link_down(self):
        """The bridge is gone: stop the pump, carrier off.  Raises
        TapError if the pump does not stop (the rings must then stay)."""
        if not self.stop():
            raise taplib.TapError("the attach pump did not stop")
        taplib.set_carrier(self.tap_fd, False)

    def link_up(self):
        """The device is open again (new rings, maybe a new MTU or offload
        set): a new pump on the same tap fd, carrier on."""
        if self.device.mtu != self.mtu:
            log.info("tap %s: mtu %d -> %d (the new bridge's)", self.tap_name, self.mtu, self.device.mtu)
            taplib.configure(self.tap_name, mtu=self.device.mtu, up=False)
            self.mtu = self.device.mtu
        self._prepare()
        self.start()
        taplib.set_carrier(self.tap_fd, True)

    def close(self):
        """Stop the pump and close the tap; False if the pump would not
        stop (the device's memory must then stay mapped)."""
        stopped = self.stop()
        os.close(self.tap_fd)
        return stopped
