"""Config model of an MQTT broker, shared by MQTT devices and the MQTT sink."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from gateway.core.config import Duration, Identifier, no_inline_secrets
from gateway.core.tls import ClientTls


class BrokerConfig(ClientTls):
    """An MQTT broker the gateway connects to (sources and sinks share it).

    With ``tls = true`` the TLS keys of ``ClientTls`` apply (CA, client
    certificate, version floor, ``insecure``); without it they are an error.
    """

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

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return no_inline_secrets(data, ("password",))

    @model_validator(mode="after")
    def _password_needs_user(self) -> BrokerConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not; set both or neither")
        stray = self.tls_keys_set()
        if stray and not self.tls:
            raise ValueError(f"{', '.join(stray)} set but tls is false; set tls = true")
        return self
