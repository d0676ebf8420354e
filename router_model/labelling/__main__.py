"""`python -m router_model.labelling` = `router-label`."""

import sys

from router_model.labelling.cli import main

sys.exit(main())
