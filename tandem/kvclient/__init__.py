"""Client library of the KV store: same-host arena/file path, remote streaming path."""

from tandem.kvclient.client import KVClient, KVClientSettings, StoreInfo

__all__ = ["KVClient", "KVClientSettings", "StoreInfo"]
