"""`python -m serving.local_server`: see serving.local_server.server.main."""

import sys

from serving.local_server.server import main

sys.exit(main())
