"""What every engine worker (decode, prefill) shares, one concept per module:

- ``settings``: the settings every worker has (``WorkerSettings``, ``MockWorkerSettings``);
- ``engines``: the engine registry (name -> builder; one module per engine);
- ``validation``: what a prompt request must satisfy before it reaches the engine;
- ``kv_params``: the KV-transfer parameters handed to the engine's KV connector;
- ``canary``: the generation that gates health;
- ``spans``: the attributes of the server span of a prompt request;
- ``kv_events``: the engine's KV events on the worker's stream, and DumpKVState's snapshot;
- ``metrics``: the engine load gauges;
- ``servicer``: WorkerService (load and KV state) over gRPC;
- ``runtime``: the lifecycle (start → canary → SERVING + lease → drain);
- ``app``: one worker put together, and the process entry point both workers share.
"""
