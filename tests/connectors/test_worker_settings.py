"""How the worker turns librdkafka-style client settings (--kafka-config, CORESTATE_KAFKA_*)
into faust's, and how --roles is checked."""

from __future__ import annotations

import ssl

import faust
import pytest

from corestate.connectors.kafka_runner import faust_settings, roles_of
from corestate.errors import PermanentError


def test_bootstrap_servers_become_faust_broker_urls() -> None:
    out = faust_settings({"bootstrap.servers": "k1:9092, k2:9093"})
    assert out["broker"] == ["kafka://k1:9092", "kafka://k2:9093"]
    assert "broker_credentials" not in out and "producer_compression_type" not in out


def test_sasl_ssl_settings_pass_through() -> None:
    out = faust_settings({"bootstrap.servers": "k:9093", "security.protocol": "SASL_SSL",
                          "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
                          "sasl.password": "pw", "compression.type": "lz4"})
    creds = out["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("svc", "pw", "SCRAM-SHA-512")
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    assert out["producer_compression_type"] == "lz4"


def test_tls_without_verification_when_asked() -> None:
    out = faust_settings({"bootstrap.servers": "k:9093", "security.protocol": "SSL",
                          "enable.ssl.certificate.verification": "false"})
    creds = out["broker_credentials"]
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.context.verify_mode == ssl.CERT_NONE


def test_an_unsupported_protocol_is_a_clear_error() -> None:
    with pytest.raises(PermanentError, match="security.protocol=KERBEROS"):
        faust_settings({"bootstrap.servers": "k:1", "security.protocol": "kerberos"})


def test_roles_are_checked() -> None:
    assert roles_of("chunk, pack") == ["chunk", "pack"]
    with pytest.raises(PermanentError, match="--roles takes"):
        roles_of("chunk,packer")
    with pytest.raises(PermanentError):
        roles_of(" , ")
