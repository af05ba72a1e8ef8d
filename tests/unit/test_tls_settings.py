"""The TLS settings group: every service has its flags, the rules between them, the flags that
give a child the same settings, the channel options; the dev CA's certificates; URL redaction."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from services.decode.settings import DecodeSettings
from services.kvstore.settings import KVStoreSettings
from services.planner.settings import PlannerServiceSettings
from services.router.settings import RouterSettings
from tandem.security.devca import make_all
from tandem.security.redact import redact_url
from tandem.service.settings import load_settings
from tandem.service.tls import TlsSettings, client_context, server_context


@pytest.mark.parametrize(("cls", "prefix"), [
    (RouterSettings, "tandem_router"), (DecodeSettings, "tandem_decode"),
    (KVStoreSettings, "tandem_kvstore"), (PlannerServiceSettings, "tandem_planner")])
def test_every_service_reads_the_tls_flags_and_environment(cls: type, prefix: str) -> None:
    env = {f"{prefix.upper()}_TLS_CA": "/c/ca.pem"}
    loaded = load_settings(cls, prefix, ["--tls-cert", "/c/s.pem", "--tls-key", "/c/s-key.pem",
                                         "--tls-client-auth", "false"], env)
    assert loaded.grpc.tls == TlsSettings("/c/s.pem", "/c/s-key.pem", "/c/ca.pem", False)


@pytest.mark.parametrize(("cert", "key", "ca"), [("a", "", "c"), ("a", "b", ""), ("", "b", ""),
                                                 ("", "", "c")])
def test_a_partial_configuration_is_refused(cert: str, key: str, ca: str) -> None:
    with pytest.raises(SystemExit):
        load_settings(RouterSettings, "tandem_router",
                      [f"--tls-cert={cert}", f"--tls-key={key}", f"--tls-ca={ca}"], {})


def test_flags_give_a_child_the_same_settings() -> None:
    tls = TlsSettings("/c/s.pem", "/c/s-key.pem", "/c/ca.pem", server_name="tandem.internal")
    assert load_settings(RouterSettings, "tandem_router", tls.flags(), {}).grpc.tls == tls
    assert TlsSettings().flags() == []
    assert tls.channel_options() == [("grpc.ssl_target_name_override", "tandem.internal")]


def test_dev_ca_certificates_serve_and_verify(tmp_path: Path) -> None:
    issued = make_all(tmp_path, ["router", "client"], hosts=["tandem.internal"])
    cert = x509.load_pem_x509_certificate(issued["router"].cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"router", "localhost", "tandem.internal"} <= set(names.get_values_for_type(
        x509.DNSName))
    assert (issued["router"].key.stat().st_mode & 0o777) == 0o600
    tls = TlsSettings(str(issued["router"].cert), str(issued["router"].key),
                      str(tmp_path / "ca.pem"))
    assert server_context(tls).verify_mode == ssl.CERT_REQUIRED
    assert server_context(tls, client_auth=False).verify_mode == ssl.CERT_NONE
    assert client_context(tls).check_hostname


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss://user:s3cret@redis:6379/0?ssl_ca_certs=/c/ca.pem",
     "rediss://user:***@redis:6379/0?ssl_ca_certs=/c/ca.pem"),
])
def test_redis_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_vllm_connector_carries_the_workers_tls() -> None:
    """The engine core's KV client (a separate process, settings as JSON) gets the worker's TLS."""
    from tandem.kvconnector.settings import ConnectorSettings
    from tandem.worker.engines.vllm import vllm_settings

    worker = load_settings(DecodeSettings, "tandem_decode", [
        "--engine", "vllm", "--kvstore-address", "store:1", "--tls-cert", "/c/d.pem",
        "--tls-key", "/c/d-key.pem", "--tls-ca", "/c/ca.pem", "--tls-server-name", "t.internal"],
        {})
    connector = vllm_settings(worker, "decode").kv_connector
    assert connector is not None
    again = ConnectorSettings.from_extra_config(connector.to_extra_config())
    assert again.client_settings().tls == TlsSettings("/c/d.pem", "/c/d-key.pem", "/c/ca.pem",
                                                      server_name="t.internal")
