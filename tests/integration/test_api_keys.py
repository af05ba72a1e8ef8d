"""API keys at the router (``--api-keys-enabled``), HTTP and gRPC, against a real Redis and a
real router over loopback (decode workers on the mock engine: this is the front door)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.router import keystore
from services.router.core.api_keys import ApiKeySettings, Limits
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.system import InProcessSystem, start_system

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
TTL_S = 0.3


@pytest.fixture(scope="module")
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=1,
                                api_keys=ApiKeySettings(enabled=True, cache_ttl_s=TTL_S))
    yield system
    await system.close()


@pytest.fixture
def admin(system: InProcessSystem) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(system.redis_url)
    yield client
    client.close()


@pytest.fixture
def tenants(system: InProcessSystem) -> Iterator[list[str]]:
    """The tenant of every request the router routes from now on."""
    seen: list[str] = []
    routing = system.router.routing
    choose = routing.choose

    def spy(model: str, tenant: str, *args: object, **kwargs: object) -> object:
        seen.append(tenant)
        return choose(model, tenant, *args, **kwargs)  # type: ignore[arg-type]

    routing.choose = spy  # type: ignore[method-assign,assignment]
    yield seen
    routing.choose = choose  # type: ignore[method-assign]


def chat_body(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
            **extra}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def post(system: InProcessSystem, headers: dict[str, str] | None = None,
               **extra: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        return await client.post(CHAT, json=chat_body(**extra), headers=headers or {})


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer sk-not-a-tandem-key",
    "Bearer tk-0123456789abcdef-" + "A" * 43,  # well-formed, unknown id
])
async def test_http_without_a_valid_key_is_401_in_openais_shape(
    system: InProcessSystem, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    reply = await post(system, headers)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    error = reply.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", None, "invalid_api_key")
    assert "A" * 10 not in error["message"]  # never echoes the key


async def test_a_wrong_secret_reads_as_an_unknown_key(
    system: InProcessSystem, admin: redis.Redis
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits())
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    wrong = await post(system, bearer(forged))
    unknown = await post(system, bearer("tk-0123456789abcdef-" + "A" * 43))
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert (await post(system, bearer(key))).status_code == 200


async def test_health_and_metrics_stay_open_models_needs_a_key(system: InProcessSystem) -> None:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401


async def test_the_tenant_is_the_keys_and_the_body_user_only_a_label(
    system: InProcessSystem, admin: redis.Redis, tenants: list[str]
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits())
    reply = await post(system, bearer(key), user="mallory-pretends-to-be-globex")
    assert reply.status_code == 200, reply.text
    reply = await post(system, bearer(key), user="globex", stream=True)
    assert reply.status_code == 200, reply.text
    assert tenants == ["acme", "acme"]


async def test_revoking_a_key_takes_effect_within_the_cache_ttl(
    system: InProcessSystem, admin: redis.Redis
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits())
    assert (await post(system, bearer(key))).status_code == 200
    assert keystore.revoke(admin, system.namespace, key.split("-")[1])
    await asyncio.sleep(TTL_S + 0.05)
    assert (await post(system, bearer(key))).status_code == 401


async def test_grpc_needs_a_key_and_takes_the_tenant_from_it(
    system: InProcessSystem, admin: redis.Redis, tenants: list[str]
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits())
    request = router_pb2.CompleteRequest(model=MODEL, prompt="abc",
                                         sampling=common_pb2.SamplingParams(max_tokens=2))
    async with grpc.aio.insecure_channel(system.grpc_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer tk-0123456789abcdef-" + "A" * 43),),
                         (("authorization", key),)):  # the scheme is required
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in stub.Complete(request, metadata=metadata):
                    pass
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.ListModels(router_pb2.ListModelsRequest(), metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = (("authorization", f"Bearer {key}"),)
        replies = [r async for r in stub.Complete(request, metadata=auth)]
        assert replies[-1].usage.completion_tokens == 2
        await stub.ListModels(router_pb2.ListModelsRequest(), metadata=auth)
        request.tenant = "acme"  # the key's own: accepted
        assert [r async for r in stub.Complete(request, metadata=auth)]
        request.tenant = "globex"  # another: refused, never silently ignored
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.Complete(request, metadata=auth):
                pass
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert tenants == ["acme", "acme"]


async def test_the_cli_creates_lists_and_revokes_without_showing_secrets(
    system: InProcessSystem, admin: redis.Redis
) -> None:
    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # in a thread: the module's system keeps running meanwhile (a blocked loop lets the
        # worker's 1 s lease lapse, and the next test finds no worker)
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.router.keys", "--redis-url", system.redis_url,
             "--namespace", system.namespace, *args],
            capture_output=True, text=True, cwd=ROOT, timeout=60)

    created = await cli("create", "--tenant", "initech", "--requests-per-minute", "60",
                        "--tokens-per-minute", "1000", "--concurrent-streams", "2")
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[0]
    key_id, secret = key.split("-")[1], key.split("-", 2)[2]
    listed = await cli("list")
    assert key_id in listed.stdout and "initech" in listed.stdout
    assert secret not in listed.stdout
    stored: dict[bytes, bytes] = admin.hgetall(  # type: ignore[assignment]
        keystore.record_key(system.namespace, key_id))
    assert secret.encode() not in b"".join([*stored.keys(), *stored.values()])
    assert stored[b"rpm"] == b"60" and stored[b"streams"] == b"2"
    assert (await cli("revoke", key_id)).returncode == 0
    assert key_id not in (await cli("list")).stdout
    assert (await cli("revoke", key_id)).returncode == 2


async def test_the_span_names_the_tenant_key_id_and_label_never_the_secret(
    system: InProcessSystem, admin: redis.Redis, exporter: InMemorySpanExporter
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits())
    reply = await post(system, bearer(key), user="alice")
    assert reply.status_code == 200, reply.text
    spans = exporter.get_finished_spans()
    tagged = [s.attributes for s in spans if s.attributes and "tandem.tenant" in s.attributes]
    assert [(a["tandem.tenant"], a["tandem.api_key_id"], a["tandem.user"]) for a in tagged] == [
        ("acme", key.split("-")[1], "alice")]
    secret = key.split("-", 2)[2]
    assert not any(secret in str(s.to_json()) for s in spans)
