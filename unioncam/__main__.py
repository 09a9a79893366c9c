"""``python -m unioncam ...``: the same as the ``unioncam`` command."""
import sys

from unioncam.cli import main

sys.exit(main())
