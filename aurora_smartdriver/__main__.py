"""``python -m aurora_smartdriver``: the same as the ``aurora-smartdriver`` command."""

from __future__ import annotations

import sys

from aurora_smartdriver.cli import main

sys.exit(main())
