"""The catalogue: the only code that talks SQL.

``db``        engine and sessions, schema checks, migrations, backups and snapshots
``queries``   named queries of the pipeline, the CLI and the daemon
``night``     what the night report reads
``summary``   what the demo reads
``sites``     several daemons on one catalogue: ownership with heartbeats, claims on work
"""

from ccdwatch.catalog.db import (
    Catalog,
    SchemaError,
    alembic_config,
    backup_sqlite,
    catalogue_full,
    catalogue_locked,
    check_schema,
    connection_lost,
    create_at_head,
    current_revision,
    engine_url,
    head_revision,
    integrity,
    is_sqlite,
    known_revision,
    log_event,
    make_engine,
    migrations_dir,
    publish_snapshot,
    sqlite_path,
    start_refusal,
    upgrade,
    utcnow,
)
from ccdwatch.catalog.queries import (
    frame_by_path_or_id,
    frames_by_path_or_id,
    last_ingest,
    query_frames,
    state_counts,
)

__all__ = [
    "Catalog",
    "SchemaError",
    "alembic_config",
    "backup_sqlite",
    "check_schema",
    "catalogue_full",
    "catalogue_locked",
    "connection_lost",
    "create_at_head",
    "current_revision",
    "engine_url",
    "frame_by_path_or_id",
    "frames_by_path_or_id",
    "head_revision",
    "integrity",
    "known_revision",
    "is_sqlite",
    "last_ingest",
    "log_event",
    "make_engine",
    "migrations_dir",
    "publish_snapshot",
    "query_frames",
    "sqlite_path",
    "start_refusal",
    "state_counts",
    "upgrade",
    "utcnow",
]
