"""The base of the station's configuration model, shared by every section.

Sections live in their own modules (``controller/config_mqtt.py``, ``controller/ocpp/config.py``)
and are assembled in ``controller/config.py``; they import their base from here, not from
``controller.config``, so a section module never imports the model that embeds it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr


class ConfigError(Exception):
    """A configuration mistake, with a message fit for the operator."""


class ConfigModel(BaseModel):
    """The base of every configuration section: unknown keys, NaN and inf are errors, and a
    loaded configuration cannot change under the running station."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def default_of(cls, name: str) -> Any:
        """The default of field ``name``: code that needs it reads it here, so a default is
        written once, in the model."""
        field = cls.model_fields.get(name)
        if field is None or field.is_required():
            raise KeyError(f"{cls.__name__}.{name} has no default")
        return field.get_default(call_default_factory=True)


def reveal(secret: SecretStr | None) -> str:
    """The text of a configured secret, for the one place that must send it (MQTT login,
    OCPP Basic auth, the device model's write-only password); "" when unset. Everywhere else
    the ``SecretStr`` prints as ``**********``."""
    return "" if secret is None else secret.get_secret_value()
