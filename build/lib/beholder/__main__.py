import sys

from beholder.cli import main

sys.exit(main())
