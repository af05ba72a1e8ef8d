"""The whole request path over mutual TLS (``python -m tandem.launch --tls-dir``): a private Redis
with a password over TLS, the KV store, a prefill and a decode worker (disaggregated, the mock
engine's blocks moving over the KV store's data plane) and the router serving HTTPS. A request
succeeds; a client without a valid certificate (none, or one from another CA) is refused by the
router's gRPC API, by a worker, by the KV store's gRPC and by its data plane; Redis refuses a
client without the password. Then no secret of the run (the Redis password, every private key)
shows in any log, span, /metrics page or error body."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from services.router import keystore
from services.router.core.api_keys import Limits, parse_key
from tandem.discovery import WorkerInfo, worker_key
from tandem.kvclient import dataplane_codec as codec
from tandem.redis_local import free_port
from tandem.security.devca import make_all
from tandem.service.spawn import ServiceProcess
from tandem.tokenstream.frames import HEADER, open_frame
from tandem.v1 import (
    common_pb2,
    kvstore_pb2,
    kvstore_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.otlp_sink import OtlpSink
from tests.secret_scan import Secrets

MODEL = "SmolLM2-135M-Instruct"
PROMPT = "the quick brown fox jumps over the lazy dog " * 40
"""Long enough for several KV blocks (the prefill worker stores them, the decode worker loads
them over the data plane)."""
ELSEWHERE = "tls-test-elsewhere"
"""The workers' host identity: not the store's, so their blocks travel over the data plane
(not the shared-memory arena)."""


class Secure:
    """The launched system and what a client needs to reach it."""

    def __init__(self, run_dir: Path, certs: Path, other: Path, sink: OtlpSink,
                 process: ServiceProcess) -> None:
        self.run_dir, self.certs, self.other, self.sink = run_dir, certs, other, sink
        self.process = process
        with redis.Redis.from_url(self.redis_url) as client:  # API keys are on: one tenant's
            self.api_key = keystore.create(client, str(self.describe()["namespace"]),
                                           "tls-tenant", Limits(0, 0, 0))
        self.auth = (("authorization", f"Bearer {self.api_key}"),)
        """The gRPC metadata of an authenticated call."""

    def describe(self) -> dict[str, object]:
        return dict(json.loads((self.run_dir / "system.json").read_text()))

    @property
    def redis_url(self) -> str:
        return str(self.describe()["redis_url"])

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=str(self.describe()["router_http_url"]),
                            verify=self.ssl_context("none"), timeout=30,
                            headers={"authorization": f"Bearer {self.api_key}"})

    def credentials(self, kind: str) -> grpc.ChannelCredentials | None:
        """"valid" (the client certificate of this CA), "none" (trusts the server, presents no
        certificate), "other" (a certificate of another CA), "plaintext" (None)."""
        ca = (self.certs / "ca.pem").read_bytes()
        if kind == "plaintext":
            return None
        if kind == "none":
            return grpc.ssl_channel_credentials(ca)
        source = self.certs if kind == "valid" else self.other
        return grpc.ssl_channel_credentials(ca, (source / "client-key.pem").read_bytes(),
                                            (source / "client.pem").read_bytes())

    def ssl_context(self, kind: str) -> ssl.SSLContext:
        """The data plane's (and HTTPS's) client side, for the same kinds but plaintext."""
        context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        if kind != "none":
            source = self.certs if kind == "valid" else self.other
            context.load_cert_chain(source / "client.pem", source / "client-key.pem")
        return context

    def worker(self, role: str) -> WorkerInfo:
        namespace = str(self.describe()["namespace"])
        with redis.Redis.from_url(self.redis_url) as client:
            raw = client.get(worker_key(namespace, f"{role}-0"))
        assert raw is not None, f"{role}-0 is not registered"
        return WorkerInfo.from_json(raw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("tls")
    certs, other, run_dir = root / "certs", root / "other-ca", root / "run"
    make_all(certs)
    make_all(other, ["client"], label="another CA")
    with OtlpSink() as sink:
        process = ServiceProcess("launch", "tandem.launch", [
            "--engine", "mock", "--prefill-workers", "1", "--decode-workers", "1",
            "--disaggregation", "always", "--tls-dir", str(certs),
            "--otlp-endpoint", sink.endpoint, "--namespace", f"tls-{uuid.uuid4().hex[:8]}",
            "--http-port", str(free_port()), "--grpc-port", str(free_port()),
            "--run-dir", str(run_dir)], log_path=run_dir / "launch.log",
            env={"TANDEM_ROUTER_API_KEYS_ENABLED": "true",
                 "TANDEM_DECODE_KV_HOST_ID": ELSEWHERE,
                 "TANDEM_PREFILL_KV_HOST_ID": ELSEWHERE}).start()
        try:
            process.wait_ready(lambda: (run_dir / "system.json").exists(), timeout_s=120)
            yield Secure(run_dir, certs, other, sink, process)
        finally:
            process.stop()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def kvstore_metrics(secure: Secure) -> str:
    urls = [str(url) for url in secure.describe()["metrics_urls"]]  # type: ignore[attr-defined]
    with httpx.Client(verify=secure.ssl_context("none"), timeout=10) as client:
        pages = [client.get(url).text for url in urls]
    return next(page for page in pages if "tandem_kvstore_transfer_bytes" in page)


def test_a_request_takes_the_whole_path_over_mtls(secure: Secure) -> None:
    before = metric(kvstore_metrics(secure), "tandem_kvstore_transfer_bytes_total",
                    path="dataplane", direction="out")
    with secure.http() as client:
        assert str(client.base_url).startswith("https://")
        reply = client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["finish_reason"] == "length"
    after = metric(kvstore_metrics(secure), "tandem_kvstore_transfer_bytes_total",
                   path="dataplane", direction="out")
    assert after > before, "the decode worker loaded no block over the (TLS) data plane"
    # the router's gRPC API, with the client certificate
    with grpc.secure_channel(str(secure.describe()["router_grpc_address"]),
                             secure.credentials("valid")) as channel:  # type: ignore[arg-type]
        models = router_pb2_grpc.RouterServiceStub(channel).ListModels(
            router_pb2.ListModelsRequest(), timeout=10, metadata=secure.auth)
    assert MODEL in [m.id for m in models.models]


def _calls(secure: Secure) -> dict[str, tuple[str, object]]:
    """One cheap call per server: its address and a function of a channel."""
    kvstore = str(secure.describe()["kvstore_address"])
    return {
        "router": (str(secure.describe()["router_grpc_address"]),
                   lambda ch: router_pb2_grpc.RouterServiceStub(ch).ListModels(
                       router_pb2.ListModelsRequest(), timeout=5, metadata=secure.auth)),
        "decode worker": (secure.worker("decode").address,
                          lambda ch: worker_pb2_grpc.WorkerServiceStub(ch).GetLoad(
                              worker_pb2.GetLoadRequest(), timeout=5)),
        "prefill worker": (secure.worker("prefill").address,
                           lambda ch: worker_pb2_grpc.WorkerServiceStub(ch).GetLoad(
                               worker_pb2.GetLoadRequest(), timeout=5)),
        "kvstore": (kvstore, lambda ch: kvstore_pb2_grpc.KVStoreServiceStub(ch).Describe(
            kvstore_pb2.DescribeRequest(), timeout=5)),
    }


def _answers(secure: Secure, address: str, call: object, kind: str) -> bool:
    credentials = secure.credentials(kind)
    channel = (grpc.insecure_channel(address) if credentials is None
               else grpc.secure_channel(address, credentials))
    with channel:
        try:
            call(channel)  # type: ignore[operator]
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
            return False
    return True


def _data_plane_answers(port: int, context: ssl.SSLContext | None) -> bool:
    """A LOOKUP on the data plane: whether a reply frame comes back."""
    request = codec.encode_hashes(codec.Op.LOOKUP, 1, [bytes(16)])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock = raw if context is None else context.wrap_socket(raw, server_hostname="127.0.0.1")
        sock.sendall(request)
        got = b""
        while len(got) < codec.FRAME_BYTES:
            piece = sock.recv(codec.FRAME_BYTES - len(got))
            if not piece:
                return False
            got += piece
        return codec.decode_frame(got, codec.Limits(64, 1 << 20),
                                  codec.REPLY_RULES).op is codec.Op.LOOKUP
    except (OSError, ssl.SSLError):  # reset, handshake refused, alert after the handshake
        return False
    finally:
        raw.close()


def test_a_client_without_a_valid_certificate_is_refused(secure: Secure) -> None:
    for server, (address, call) in _calls(secure).items():
        assert _answers(secure, address, call, "valid"), f"{server} refused a valid client"
        for kind in ("none", "other", "plaintext"):
            assert not _answers(secure, address, call, kind), \
                f"{server} answered a client with {kind} certificate"
    with grpc.secure_channel(str(secure.describe()["kvstore_address"]),
                             secure.credentials("valid")) as channel:  # type: ignore[arg-type]
        port = kvstore_pb2_grpc.KVStoreServiceStub(channel).Describe(
            kvstore_pb2.DescribeRequest(), timeout=5).data_port
    assert port, "the store offers no data plane"
    _only_a_valid_client_is_answered(secure, _data_plane_answers, port, "the data plane")


def _only_a_valid_client_is_answered(secure: Secure,
                                     answers: Callable[[int, ssl.SSLContext | None], bool],
                                     port: int, server: str) -> None:
    assert answers(port, secure.ssl_context("valid")), f"{server} refused a valid client"
    for kind in ("none", "other", "plaintext"):
        context = None if kind == "plaintext" else secure.ssl_context(kind)
        assert not answers(port, context), f"{server} answered a client with {kind} certificate"


def _token_stream_answers(port: int, context: ssl.SSLContext | None) -> bool:
    """A Generate call on the decode worker's token stream: whether a frame comes back."""
    opening = open_frame((), worker_pb2.GenerateRequest(
        request_id="tls", prompt_token_ids=[1, 2, 3], model=MODEL,
        sampling=common_pb2.SamplingParams(max_tokens=1)).SerializeToString())
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock = raw if context is None else context.wrap_socket(raw, server_hostname="127.0.0.1")
        sock.sendall(opening)
        return len(sock.recv(HEADER.size)) > 0
    except (OSError, ssl.SSLError):
        return False
    finally:
        raw.close()


def test_the_token_stream_refuses_a_client_without_a_valid_certificate(
        secure: Secure) -> None:
    port = secure.worker("decode").stream_port
    assert port, "the decode worker announces no token stream"
    _only_a_valid_client_is_answered(secure, _token_stream_answers, port, "the token stream")


def test_redis_refuses_a_client_without_the_password(secure: Secure) -> None:
    url = secure.redis_url
    assert url.startswith("rediss://"), "the private Redis is not over TLS"
    with redis.Redis.from_url(url) as client:
        assert client.ping()
    parts = urllib.parse.urlsplit(url)
    no_password = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.split("@")[1]))
    with redis.Redis.from_url(no_password) as client, pytest.raises(redis.AuthenticationError):
        client.get("anything")
    wrong = url.replace(f":{parts.password}@", ":wrong-password-0123@")
    with redis.Redis.from_url(wrong) as client, pytest.raises(redis.AuthenticationError):
        client.ping()
    plaintext = f"redis://:{parts.password}@{parts.hostname}:{parts.port}/0"
    with redis.Redis.from_url(plaintext, socket_timeout=5) as client, \
            pytest.raises(redis.ConnectionError):
        client.ping()


def _bad_requests(secure: Secure) -> dict[str, str]:
    """The error bodies of a few bad requests, HTTP and gRPC."""
    bodies = {}
    with secure.http() as client:
        for name, body in {"bad json": b"{not json", "unknown model": json.dumps({
                "model": "nope", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                "bad field": json.dumps({"model": MODEL, "messages": [], "max_tokens": -1}
                                        ).encode()}.items():
            reply = client.post("/v1/chat/completions", content=body,
                                headers={"content-type": "application/json"})
            assert reply.status_code >= 400, name
            bodies[f"HTTP {name}"] = reply.text
    with grpc.secure_channel(str(secure.describe()["router_grpc_address"]),
                             secure.credentials("valid")) as channel:  # type: ignore[arg-type]
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Complete(router_pb2.CompleteRequest(model="nope", prompt="hi"), timeout=10,
                            metadata=secure.auth))
        error: grpc.Call = refused.value  # type: ignore[assignment]
        bodies["gRPC unknown model"] = f"{error.details()} {error.trailing_metadata()}"
    return bodies


def test_no_secret_in_logs_spans_metrics_or_errors(secure: Secure) -> None:
    """Runs last in this module: it stops the system, so every log and span is complete."""
    secrets = Secrets()
    secrets.add("Redis password", str(urllib.parse.urlsplit(secure.redis_url).password))
    for key in sorted(secure.certs.glob("*-key.pem")):
        secrets.add_pem_key(f"private key {key.name}", key)
    secrets.add("API key", secure.api_key)
    parsed = parse_key(secure.api_key)  # the secret is URL-safe base64: it may hold a "-"
    assert parsed is not None
    secrets.add("API key's secret", parsed.secret)
    with secure.http() as client:
        reply = client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT,
                                                     "max_tokens": 2})
        assert reply.status_code == 200, reply.text
    sources: dict[str, str | bytes] = dict(_bad_requests(secure))
    urls = [str(url) for url in secure.describe()["metrics_urls"]]  # type: ignore[attr-defined]
    with httpx.Client(verify=secure.ssl_context("none"), timeout=10) as client:
        sources.update({f"metrics {url}": client.get(url).text for url in urls})
    secure.process.stop()  # the services flush their spans and finish their logs
    sink_spans = secure.sink.wait_for(lambda spans: len(spans) > 0)
    assert {span.service for span in sink_spans} >= {"tandem-router", "tandem-kvstore"}
    sources.update({f"spans export {i}": raw for i, raw in enumerate(secure.sink.raw)})
    logs = sorted(secure.run_dir.glob("*.log"))
    assert len(logs) >= 5, logs
    sources.update({f"log {path.name}": path.read_bytes() for path in logs})
    assert secrets.scan(sources) == []
