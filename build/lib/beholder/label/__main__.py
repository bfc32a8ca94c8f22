"""python -m beholder.label [export|review]: the spelling before the beholder command."""

import sys

from beholder.cli import main

sys.exit(main(["label", *sys.argv[1:]]))
