"""The framed token stream: ``DecodeService.Generate`` on a TCP port of the decode worker's own,
beside gRPC (which stays the contract, the fallback and what other languages use). The same
request and response messages travel, framed by a 5-byte header instead of HTTP/2, so a router
pays one ``data_received`` and one protobuf parse per token message instead of grpc.aio's
per-message machinery. Spec: docs/token-stream.md."""
