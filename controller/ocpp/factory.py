"""The one place that builds the station's OCPP client from the configuration.

``ocpp.version`` picks the version's package (imported only when chosen, so a station on
1.6J never loads 2.0.1's handlers and the reverse); the caller gets an
:class:`~controller.ocpp.ports.OcppClientPort` and never names a version's class.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from controller.config import StationConfig
from controller.ocpp.ports import OcppClientPort
from controller.ocpp.wire import utc_now


def build_client(cfg: StationConfig, *, wall: Callable[[], datetime] = utc_now
                 ) -> OcppClientPort | None:
    """The OCPP client of ``cfg`` (2.0.1 or 1.6J by ``ocpp.version``), not yet attached;
    None when the station has no ``[ocpp]`` section."""
    if cfg.ocpp is None:
        return None
    if cfg.ocpp.version == "1.6":
        from controller.ocpp.v16.service import Ocpp16Service

        return Ocpp16Service(cfg.ocpp, cfg, wall=wall)
    from controller.ocpp.v201.service import OcppService

    return OcppService(cfg.ocpp, cfg, wall=wall)
