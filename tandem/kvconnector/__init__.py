"""tandem's vLLM KV connector: moves whole KV blocks between vLLM's paged cache and the KV store.

The connector's blocks are the store's blocks: one vLLM block (all layers) is one store block,
addressed by tandem's chained block hash (tandem/hashing.py), so a block written by any worker
is a prefix hit for every worker. ``plan`` is the pure bookkeeping (which blocks to load and
save in which step), ``layout`` copies blocks out of and into the paged cache, ``bridge`` is a
synchronous face of the asynchronous KV-store client, ``connector`` plugs them into vLLM.
"""
