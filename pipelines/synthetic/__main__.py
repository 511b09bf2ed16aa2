"""`python -m pipelines.synthetic`: see pipelines.synthetic.cli."""

import sys

from pipelines.synthetic.cli import main

sys.exit(main())
