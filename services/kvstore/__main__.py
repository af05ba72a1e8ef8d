"""Entry point of the KV store: ``python -m services.kvstore --help``."""

import sys

from services.kvstore.app import main

main(sys.argv[1:])
