"""The KV store's pure logic: no I/O, no clock (callers pass ``now``), no asyncio.

``state`` is the store's state machine (reserve, commit, pins, leases, corruption, the
eviction/demotion/promotion plan) over ``metadata.Index`` and the tiers' ``capacity``;
``policy`` holds the watermark and victim rules, ``reconcile`` the start-up plan, ``validate``
the request checks. The I/O side (``services.kvstore.store`` and friends) drives it.
"""
