"""Entry point of the decode worker: ``python -m services.decode --help``."""

import sys

from services.decode.app import main

main(sys.argv[1:])
