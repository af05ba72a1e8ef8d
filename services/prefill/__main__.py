"""Entry point of the prefill worker: ``python -m services.prefill --help``."""

import sys

from services.prefill.app import main

main(sys.argv[1:])
