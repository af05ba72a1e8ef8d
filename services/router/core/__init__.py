"""The router's pure logic: routing cost, block index, policies, the request state machine,
the in-flight ledger. No I/O, no clock, no asyncio; table-tested."""
