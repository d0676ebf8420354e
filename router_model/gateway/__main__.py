"""`python -m router_model.gateway` = `router-gateway`."""

import sys

from router_model.gateway.cli import main

sys.exit(main())
