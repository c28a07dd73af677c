"""Config model of an MQTT broker, shared by MQTT devices and the MQTT sink."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from gateway.core.config import Duration, Identifier, Model, no_inline_secrets


class BrokerConfig(Model):
    """An MQTT broker the gateway connects to (sources and sinks share it)."""

    id: Identifier
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry: Duration = 86400.0
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 1000
    tls: bool = False
    ca_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return no_inline_secrets(data, ("password",))

    @model_validator(mode="after")
    def _password_needs_user(self) -> BrokerConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not; set both or neither")
        return self
