"""python -m beholder.ratings: the spelling before the beholder command."""

import sys

from beholder.cli import main

sys.exit(main(["ratings", *sys.argv[1:]]))
