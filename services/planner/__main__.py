"""Entry point of the planner: ``python -m services.planner --help``."""

import sys

from services.planner.app import main

main(sys.argv[1:])
