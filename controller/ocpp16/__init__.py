"""OCPP 1.6J station client (docs/ocpp16.md); shares connection, queue and limits with
controller/ocpp/."""
