"""Transports of the KV store: the gRPC servicer (``server``) and the data plane
(``dataplane``). They frame bytes; the store logic they share is ``services.kvstore.transfer``."""
