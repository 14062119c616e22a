"""Start and stop the HL7 order intake: services, the order applier, the MLLP listener."""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_server.bootstrap import Services, build_services
from dicomweb_server.config import Settings
from dicomweb_server.hl7v2.handler import handle_message
from dicomweb_server.hl7v2.listener import MllpListener
from dicomweb_server.hl7v2.workitems import WorkitemOrders


@dataclass
class HL7Service:
    services: Services
    listener: MllpListener

    @property
    def port(self) -> int:
        return self.listener.port

    def stop(self) -> None:
        self.listener.stop()
        self.services.close()


def start(settings: Settings) -> HL7Service:
    """Listen on (host, hl7_port); raises OSError when the port cannot be bound."""
    services = build_services(settings)
    orders = WorkitemOrders(services.workitems)
    listener = MllpListener(settings, lambda payload: handle_message(payload, orders.apply))
    try:
        listener.start()
    except BaseException:
        services.close()
        raise
    return HL7Service(services, listener)
