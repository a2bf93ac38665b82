"""SQLAlchemy's pytest plugin, loaded as external dialects load it (dialects: entry points)."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("sqlalchemy.testing.assertions")

from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: E402, F403
