"""vbus: buses as containers for access to software devices.

An administrator creates buses, instantiates devices from device classes
(registered by modules, found through the `vbus.device_classes` entry-point
group), links each device to one or more buses and says who may connect to
each bus.  Drivers connected to a bus see the devices linked to it and
nothing else.  This package is the model only, pure Python, knowing nothing
of Ethernet: the daemon, its admin commands and the venet device classes
are built on it.  See docs/vbus.md.
"""
from .access import Creds, Rules
from .attrs import Attr
from .classes import GROUP, ClassTable
from .config import load as load_config
from .device import DeviceClass, DeviceInstance
from .errors import (AccessDenied, BadName, BadValue, ConfigError, DeviceError, Exists, InUse,
                     LimitReached, NoSuchAttribute, NoSuchBus, NoSuchClass, NoSuchDevice, NoSuchFunction,
                     NoSuchProcess, NoSuchRule, NotFound, NotOpen, PluginError, VbusError)
from .model import Bus, Connection, Device, Observer, Registry

__all__ = [
    "AccessDenied", "Attr", "BadName", "BadValue", "Bus", "ClassTable", "ConfigError", "Connection", "Creds",
    "Device", "DeviceClass", "DeviceError", "DeviceInstance", "Exists", "GROUP", "InUse", "LimitReached",
    "NoSuchAttribute", "NoSuchBus", "NoSuchClass", "NoSuchDevice", "NoSuchFunction", "NoSuchProcess",
    "NoSuchRule", "NotFound", "NotOpen", "Observer", "PluginError", "Registry", "Rules", "VbusError",
    "load_config",
]
