"""The Kubernetes connector with the official client against a faked API server (an HTTP
server answering the Deployment, scale and pod endpoints as the API does): the scale patch it
sends per pool, and the pool states it reads from the Deployment status and the pods being
deleted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from services.planner.connectors.kubernetes import KubernetesConnector
from services.planner.core.types import PoolState
from services.planner.settings import KubernetesSettings


def deployment(name: str, replicas: int, ready: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "llm"},
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                     "template": {"metadata": {"labels": {"app.kubernetes.io/name": name}},
                                  "spec": {"containers": [{"name": name, "image": "x"}]}}},
            "status": {"replicas": replicas, "readyReplicas": ready}}


def pod(name: str, app: str, deleting: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": app}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-03T16:00:00Z"
    return {"metadata": metadata}


class FakeApi:
    """The API's state and the requests it got."""

    def __init__(self) -> None:
        self.deployments = {"prefill": deployment("prefill", 1, 1),
                            "decode-pool": deployment("decode-pool", 3, 2)}
        self.pods = [pod("decode-pool-a", "decode-pool", False),
                     pod("decode-pool-b", "decode-pool", True),
                     pod("prefill-a", "prefill", False)]
        self.requests: list[tuple[str, str, Any]] = []


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, str]]:
    state = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, body: Any, status: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            state.requests.append(("GET", url.path, parse_qs(url.query)))
            parts = url.path.strip("/").split("/")
            if url.path.startswith("/apis/apps/v1/namespaces/llm/deployments/"):
                found = state.deployments.get(parts[-1])
                return self.reply(found or {"kind": "Status", "code": 404}, 200 if found else 404)
            if url.path == "/api/v1/namespaces/llm/pods":
                selector = parse_qs(url.query)["labelSelector"][0]
                app = selector.split("=", 1)[1]
                items = [p for p in state.pods
                         if p["metadata"]["labels"]["app.kubernetes.io/name"] == app]
                return self.reply({"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                   "items": items})
            self.reply({"kind": "Status", "code": 404}, 404)

        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(("PATCH", self.path, body))
            name = self.path.strip("/").split("/")[-2]
            state.deployments[name]["spec"]["replicas"] = body["spec"]["replicas"]
            self.reply({"apiVersion": "autoscaling/v1", "kind": "Scale",
                        "metadata": {"name": name}, "spec": body["spec"],
                        "status": {"replicas": body["spec"]["replicas"]}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def settings(url: str) -> KubernetesSettings:
    return KubernetesSettings(namespace="llm", decode_deployment="decode-pool", api_url=url)


async def test_apply_patches_the_scale_of_each_deployment(api: tuple[FakeApi, str]) -> None:
    state, url = api
    connector = KubernetesConnector(settings(url))
    await connector.start()
    state.requests.clear()
    await connector.apply({"prefill": 2, "decode": 5}, sequence=3)
    await connector.close()
    assert state.requests == [
        ("PATCH", "/apis/apps/v1/namespaces/llm/deployments/decode-pool/scale",
         {"spec": {"replicas": 5}}),
        ("PATCH", "/apis/apps/v1/namespaces/llm/deployments/prefill/scale",
         {"spec": {"replicas": 2}})]
    assert state.deployments["decode-pool"]["spec"]["replicas"] == 5


async def test_observe_reads_ready_starting_and_deleted_pods(api: tuple[FakeApi, str]) -> None:
    state, url = api
    connector = KubernetesConnector(settings(url))
    await connector.start()
    fleet = await connector.observe()
    await connector.close()
    assert fleet == {"prefill": PoolState(ready=1, starting=0, draining=0),
                     "decode": PoolState(ready=2, starting=1, draining=1)}
    pod_queries = [query for method, path, query in state.requests if path.endswith("/pods")]
    assert {"labelSelector": ["app.kubernetes.io/name=decode-pool"]} in pod_queries


async def test_start_fails_when_a_deployment_is_missing(api: tuple[FakeApi, str]) -> None:
    state, url = api
    del state.deployments["prefill"]
    connector = KubernetesConnector(settings(url))
    with pytest.raises(Exception, match="404"):
        await connector.start()
    await connector.close()
