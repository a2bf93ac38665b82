"""SQLAlchemy's test provisioning for the aurora dialects: the wrapped drivers' own.

SQLAlchemy's testing plugin imports ``<dialect package>.provision`` (``load_provisioning``);
the hooks it needs (temporary tables, schema clean-up, ...) are registered per backend name
(postgresql, mysql, mariadb) by SQLAlchemy's own dialect packages, which serve these dialects
unchanged. Only used when running SQLAlchemy's test suite (compliance/run.py).
"""

from __future__ import annotations

from sqlalchemy.dialects.mysql import provision as _mysql_provision
from sqlalchemy.dialects.postgresql import provision as _postgresql_provision

__all__: list[str] = []

_LOADED = (_mysql_provision, _postgresql_provision)
