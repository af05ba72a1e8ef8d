"""Transports of the decode worker: the DecodeService gRPC servicer and its streaming."""
