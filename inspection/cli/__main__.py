"""python -m inspection.cli: the same as the `inspection` command."""
import sys

from inspection.cli import main

sys.exit(main())
