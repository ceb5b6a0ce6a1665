"""Group network ports: dynamic ports picked per allocation, and the task variables that name them.

- ``nomad/structs/network.go`` (``NetworkIndex.AssignPorts``): a dynamic port is picked from the client's range
  (``DefaultMinDynamicPort`` 20000 to ``DefaultMaxDynamicPort`` 32000), never one that another live allocation
  on the node holds; a static port is reserved as given. The allocation records them in
  ``AllocatedResources.Shared.Ports`` (``structs.AllocatedPortMapping``: ``Label``, ``Value``, ``To``,
  ``HostIP``) and ``Shared.Networks``.
- ``client/taskenv/env.go`` (``buildPortEnv``): ``NOMAD_HOST_IP_<label>``, ``NOMAD_HOST_PORT_<label>``,
  ``NOMAD_HOST_ADDR_<label>`` name the node's side; ``NOMAD_IP_``, ``NOMAD_PORT_``, ``NOMAD_ADDR_`` what the
  task binds (``To`` when the port is mapped, else the host port); ``NOMAD_ALLOC_PORT_<label>`` only when mapped.

The double's one node is this machine, so ``HostIP`` is loopback, and a picked port is also checked free on
it (tests share the machine with other servers).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable
from typing import Any

MIN_DYNAMIC_PORT, MAX_DYNAMIC_PORT = 20000, 32000
HOST_IP = "127.0.0.1"


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST_IP, port))
        except OSError:
            return False
    return True


def assign_ports(group: dict[str, Any], taken: Iterable[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(``Shared.Ports``, ``Shared.Networks``) for one allocation of ``group``; ``taken``: ports of live allocs."""
    used = set(taken)
    ports: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for network in group.get("Networks") or []:
        dynamic, reserved = [], []
        for port in network.get("ReservedPorts") or []:
            reserved.append({**port})
            ports.append({"Label": port["Label"], "Value": port["Value"], "To": port.get("To") or 0, "HostIP": HOST_IP})
            used.add(int(port["Value"]))
        for port in network.get("DynamicPorts") or []:
            for _ in range(200):
                value = random.randint(MIN_DYNAMIC_PORT, MAX_DYNAMIC_PORT)
                if value not in used and _free(value):
                    break
            else:
                raise RuntimeError("no free dynamic port")  # a double-only failure: the machine is full of sockets
            used.add(value)
            dynamic.append({**port, "Value": value})
            ports.append({"Label": port["Label"], "Value": value, "To": port.get("To") or 0, "HostIP": HOST_IP})
        networks.append({"Mode": network.get("Mode") or "host", "Device": "", "CIDR": "", "IP": HOST_IP,
                         "ReservedPorts": reserved or None, "DynamicPorts": dynamic or None})
    return ports, networks


def ports_of(alloc: dict[str, Any]) -> list[dict[str, Any]]:
    """The allocation's ``AllocatedResources.Shared.Ports``."""
    return list(((alloc.get("AllocatedResources") or {}).get("Shared") or {}).get("Ports") or [])


def port_env(alloc: dict[str, Any]) -> dict[str, str]:
    """The task variables of an allocation's ports (see the module docstring)."""
    env = {}
    for port in ports_of(alloc):
        label, host, value, to = port["Label"], port["HostIP"], str(port["Value"]), int(port.get("To") or 0)
        inside = str(to) if to > 0 else value
        env.update({f"NOMAD_HOST_IP_{label}": host, f"NOMAD_HOST_PORT_{label}": value,
                    f"NOMAD_HOST_ADDR_{label}": f"{host}:{value}", f"NOMAD_IP_{label}": host,
                    f"NOMAD_PORT_{label}": inside, f"NOMAD_ADDR_{label}": f"{host}:{inside}"})
        if to > 0:
            env[f"NOMAD_ALLOC_PORT_{label}"] = str(to)
    return env
