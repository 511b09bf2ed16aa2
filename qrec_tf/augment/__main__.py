"""`python -m qrec_tf.augment`: see qrec_tf.augment.cli."""

import sys

from qrec_tf.augment.cli import main

sys.exit(main())
