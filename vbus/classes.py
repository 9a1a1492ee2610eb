"""The table of device classes: registered explicitly, or found through
the entry-point group `vbus.device_classes` so that a separately installed
package can add one.  An entry point names a DeviceClass subclass (or an
instance); its name must be the class's `name`.  A broken plugin (it does
not import, is no DeviceClass, has a bad schema, clashes with a class
already there) is reported in one line and skipped: the others load."""
import importlib.metadata
import logging

from .device import check_class
from .errors import Exists, NoSuchClass, PluginError

GROUP = "vbus.device_classes"
log = logging.getLogger("vbus")


class ClassTable:
    def __init__(self):
        self._classes = {}

    def register(self, cls):
        """Add a class (a DeviceClass subclass or instance); returns the
        instance kept.  PluginError for a bad class, Exists for a taken
        name."""
        cls = check_class(cls)
        if cls.name in self._classes:
            raise Exists(f"a device class named '{cls.name}' is already registered")
        self._classes[cls.name] = cls
        return cls

    def get(self, name):
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            have = ", ".join(sorted(self._classes)) or "none"
            raise NoSuchClass(f"no device class {str(name)[:40]!r} (known: {have})") from None

    def names(self):
        return sorted(self._classes)

    def __contains__(self, name):
        return name in self._classes

    def __len__(self):
        return len(self._classes)

    def load_entry_points(self, group=GROUP, path=None):
        """Register every class of the entry-point group; returns the list of
        one-line problems (each also logged as a warning).  `path` limits
        the search to distributions found on those directories (tests)."""
        problems = []
        if path is None:
            eps = importlib.metadata.entry_points(group=group)
        else:
            eps = [ep for dist in importlib.metadata.distributions(path=list(path))
                   for ep in dist.entry_points if ep.group == group]
        for ep in sorted(eps, key=lambda e: (e.name, e.value)):
            try:
                try:
                    obj = ep.load()
                except Exception as e:
                    raise PluginError(f"cannot load {ep.value}: {type(e).__name__}: {e}") from None
                cls = check_class(obj)
                if cls.name != ep.name:
                    raise PluginError(f"{ep.value} is class '{cls.name}', not '{ep.name}'")
                self.register(cls)
            except (PluginError, Exists) as e:
                line = f"device class plugin '{ep.name}' skipped: {e}"
                log.warning("%s", line)
                problems.append(line)
        return problems

    @classmethod
    def discover(cls, group=GROUP):
        """A table holding every installed plugin class (problems logged)."""
        table = cls()
        table.load_entry_points(group)
        return table
