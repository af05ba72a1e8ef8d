"""Entry point of the router: ``python -m services.router --help``."""

import sys

from services.router.app import main

main(sys.argv[1:])
