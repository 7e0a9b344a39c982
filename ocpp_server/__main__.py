"""``python -m ocpp_server serve|station|token|call ...`` (same as ``mwc csms ...``)."""

import sys

from ocpp_server.cli import run

sys.exit(run())
