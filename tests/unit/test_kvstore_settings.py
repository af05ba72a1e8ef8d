"""The KV store's settings: flag names as deployments know them, the drain grace, the store's
own group, and ``--tiers`` checked against the registry of tier kinds."""

from __future__ import annotations

import argparse
import typing

import pytest

from services.kvstore.settings import KVStoreSettings, StoreSettings, TierKind
from services.kvstore.tiers.registry import TIER_KINDS
from tandem.service.settings import add_arguments, load_settings

FLAGS = {
    "--chunk-bytes", "--cxl-capacity-bytes", "--cxl-path", "--data-advertise-host",
    "--data-plane", "--data-port", "--drain-grace-s", "--high-watermark", "--host", "--host-id",
    "--lease-ms", "--log-level", "--low-watermark", "--malloc-keep-bytes", "--max-block-bytes",
    "--max-chain-blocks", "--metrics-port", "--namespace", "--nvme-capacity-bytes",
    "--nvme-direct-io", "--nvme-path", "--otlp-endpoint", "--populate", "--port",
    "--promote-on-hit", "--redis-url", "--redis-timeout-s", "--reserve-timeout-s",
    "--slot-bytes", "--store-id",
    "--tiers", "--verify-on-commit", "--verify-on-start",
    # the shared gRPC and telemetry groups (new with the service kit)
    "--max-message-bytes", "--keepalive-time-ms", "--keepalive-timeout-ms",
    "--trace-sample-ratio",
    # TLS of every hop (tandem.service.tls, in the gRPC group)
    "--tls-cert", "--tls-key", "--tls-ca", "--tls-client-auth", "--tls-server-name",
}


def test_flag_names() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, KVStoreSettings, "tandem_kvstore")
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert flags - {"-h", "--help"} == FLAGS


@pytest.mark.parametrize(("argv", "environ", "grace"), [
    ([], {}, 10.0),
    (["--drain-grace-s", "2.5"], {}, 2.5),
    ([], {"TANDEM_KVSTORE_DRAIN_GRACE_S": "4"}, 4.0),
])
def test_drain_grace(argv: list[str], environ: dict[str, str], grace: float) -> None:
    loaded = load_settings(KVStoreSettings, "tandem_kvstore", argv, environ)
    assert loaded.server.drain_grace_s == grace


def test_the_store_takes_its_group() -> None:
    loaded = load_settings(KVStoreSettings, "tandem_kvstore",
                           ["--lease-ms", "5", "--promote-on-hit", "false"], {})
    assert isinstance(loaded, StoreSettings)
    assert (loaded.lease_ms, loaded.promote_on_hit) == (5, False)


@pytest.mark.parametrize("tiers", ["cxl,tape", "nvme,nvme", ""])
def test_tiers_must_be_known_kinds_once(tiers: str) -> None:
    with pytest.raises(SystemExit):
        load_settings(KVStoreSettings, "tandem_kvstore", ["--tiers", tiers], {})


def test_the_tier_choices_are_the_registry() -> None:
    assert typing.get_args(TierKind) == tuple(TIER_KINDS)
