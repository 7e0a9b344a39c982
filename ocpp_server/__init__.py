"""mwcharge's standalone OCPP backend (CSMS): OCPP 2.0.1/1.6J endpoint, REST API, SQLite.

Imports nothing from ``controller/``; see ``docs/csms.md``.
"""
