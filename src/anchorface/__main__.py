"""`python -m anchorface ...` (e.g. `accelerate launch -m anchorface train ...`): the `anchorface` command."""

import sys

from anchorface.apps.cli import main

sys.exit(main())
