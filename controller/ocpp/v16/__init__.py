"""OCPP 1.6J specifics of the station client: handlers, messages, transactions and
configuration keys (docs/ocpp16.md)."""
