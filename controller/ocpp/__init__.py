"""OCPP 2.0.1 client of the station (issue 6): see docs/ocpp.md."""
