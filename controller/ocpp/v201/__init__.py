"""OCPP 2.0.1 specifics of the station client (handlers, messages, transactions, device model)."""
