"""``LibvirtHypervisor``: vmmgr.ports.Hypervisor; opens ``LibvirtConnection``s by URI."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from drivers.hypervisor.libvirt.config import LibvirtConfig
from drivers.hypervisor.libvirt.connection import LibvirtConnection
from drivers.hypervisor.libvirt.events import start_event_loop
from drivers.hypervisor.libvirt.seed import SeedIsoBuild
from vmmgr.ports import HostConnection, Hypervisor


def test_uri(node_xml_path: str) -> str:
    """The libvirt test-driver URI for a custom node XML file: ``test:///ABS/PATH.xml``.

    Every open of such a URI is a private, in-memory host (state is lost on close).
    """
    return "test://" + os.path.abspath(node_xml_path)


test_uri.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


class LibvirtHypervisor:
    """Opens connections to libvirt URIs (qemu:///system, qemu+tcp://host/system,
    test:///PATH.xml). Starts the process-wide libvirt event loop on first use."""

    def __init__(self, config: LibvirtConfig | None = None) -> None:
        self.config = config or LibvirtConfig()

    def connect(self, uri: str, *, host_name: str) -> LibvirtConnection:
        """An open connection; Unavailable if the URI cannot be reached."""
        start_event_loop()
        conn = LibvirtConnection(uri, host_name=host_name, config=self.config)
        try:
            conn.open()
        except BaseException:
            conn.close()
            raise
        return conn

    def build_seed(self, meta_data: str, user_data: str, network_config: str) -> SeedIsoBuild:
        return SeedIsoBuild(meta_data, user_data, network_config)


if TYPE_CHECKING:  # mypy proves the driver satisfies the ports it implements
    _hypervisor: Hypervisor = LibvirtHypervisor()
    _connection: HostConnection = LibvirtConnection(
        "test:///default", host_name="", config=LibvirtConfig()
    )
