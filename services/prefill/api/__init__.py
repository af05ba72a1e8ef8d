"""Transports of the prefill worker: the PrefillService gRPC servicer."""
