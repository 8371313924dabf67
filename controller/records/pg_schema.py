"""The records' tables on PostgreSQL, as migrations numbered like SQLite's (`schema.MIGRATIONS`).

PostgreSQL support arrived with schema 6, so a PostgreSQL database is made at schema 6 in one
step and steps 2-6 are empty here; from step 7 on both lists grow together. The columns of every
audited table are the same as on SQLite, with the same types as Python sees them (TEXT → str,
INTEGER → int, REAL → float), so a row hashes the same on both and `records migrate` keeps the
audit chain verifiable. Time stamps stay ISO-8601 text as on SQLite.

What PostgreSQL adds, because several rooms' services write at once (docs/design.md §6.4):
- ``booking_devices.during``/``active`` (filled by triggers, not hashed) and an exclusion
  constraint: a device cannot be booked twice for overlapping times, whichever host books;
- partial unique indexes: one registered device per port and per reported model+serial;
- ``audit_high``: the highest audit id ever given (SQLite's AUTOINCREMENT keeps it in
  ``sqlite_sequence``), so a deleted tail of the chain shows;
- ``samples.rowid``: insertion order, which SQLite has built in;
- ``instr``, ``json_extract`` and ``json_type`` for the records' one body of SQL.
"""

from __future__ import annotations

_REFUSE = """CREATE FUNCTION modctl_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation'; END $$"""


def _refuse(table: str, when: str, message: str) -> str:
    return (f"CREATE TRIGGER {table}_no_{when.lower()} BEFORE {when} ON {table} FOR EACH ROW "
            f"EXECUTE FUNCTION modctl_refuse('{message}')")


COMPAT_FUNCTIONS: tuple[str, ...] = (
    """CREATE FUNCTION instr(haystack text, needle text) RETURNS integer
        LANGUAGE sql IMMUTABLE AS $$ SELECT strpos(haystack, needle) $$""",
    # Only the '$.key' paths the records use.
    """CREATE FUNCTION json_extract(doc text, path text) RETURNS double precision
        LANGUAGE sql IMMUTABLE AS $$
        SELECT CASE WHEN jsonb_typeof(doc::jsonb -> substr(path, 3)) = 'number'
                    THEN (doc::jsonb ->> substr(path, 3))::double precision END $$""",
    """CREATE FUNCTION json_type(doc text, path text) RETURNS text
        LANGUAGE sql IMMUTABLE AS $$
        SELECT CASE jsonb_typeof(doc::jsonb -> substr(path, 3))
               WHEN 'number' THEN 'real' ELSE jsonb_typeof(doc::jsonb -> substr(path, 3))
               END $$""",
    _REFUSE,
)

TABLES: tuple[str, ...] = (
    """CREATE TABLE sessions (
        id TEXT PRIMARY KEY, profile TEXT NOT NULL, port TEXT NOT NULL,
        identity TEXT NOT NULL, operator TEXT NOT NULL, patient TEXT,
        prescription TEXT NOT NULL, planned_s DOUBLE PRECISION NOT NULL,
        started_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed', 'interrupted')),
        outcome TEXT, reason TEXT, stop_source TEXT, delivered_s DOUBLE PRECISION, dose TEXT,
        ended_at TEXT, owner TEXT, profile_path TEXT NOT NULL DEFAULT '',
        profile_sha256 TEXT NOT NULL DEFAULT '', device_elapsed_s DOUBLE PRECISION)""",
    "CREATE INDEX sessions_patient ON sessions (patient, started_at)",
    "CREATE INDEX sessions_status ON sessions (status)",
    """CREATE TABLE events (
        session_id TEXT NOT NULL REFERENCES sessions (id), seq BIGINT NOT NULL,
        t_s DOUBLE PRECISION NOT NULL, at TEXT NOT NULL, kind TEXT NOT NULL,
        detail TEXT NOT NULL, delivered_s DOUBLE PRECISION, dose TEXT,
        PRIMARY KEY (session_id, seq))""",
    """CREATE TABLE samples (
        session_id TEXT NOT NULL REFERENCES sessions (id), t_s DOUBLE PRECISION NOT NULL,
        data TEXT NOT NULL, delivered_s DOUBLE PRECISION, dose TEXT, batch BIGINT,
        rowid BIGINT GENERATED ALWAYS AS IDENTITY)""",
    "CREATE INDEX samples_session ON samples (session_id, t_s)",
    "CREATE INDEX samples_batch ON samples (batch)",
    """CREATE TABLE audit (
        id BIGINT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        subject TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL)""",
    _refuse("audit", "UPDATE", "the audit trail is append-only"),
    _refuse("audit", "DELETE", "the audit trail is append-only"),
    "CREATE TABLE audit_high (seq BIGINT NOT NULL)",
    "INSERT INTO audit_high VALUES (0)",
    """CREATE FUNCTION audit_high_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE audit_high SET seq = GREATEST(seq, NEW.id); RETURN NEW; END $$""",
    """CREATE TRIGGER audit_high_bump AFTER INSERT ON audit FOR EACH ROW
        EXECUTE FUNCTION audit_high_bump()""",
    _refuse("audit_high", "DELETE", "the audit trail is append-only"),
    """CREATE TRIGGER audit_high_no_lower BEFORE UPDATE ON audit_high FOR EACH ROW
        WHEN (NEW.seq < OLD.seq)
        EXECUTE FUNCTION modctl_refuse('the audit trail is append-only')""",
    """CREATE TABLE devices (
        name TEXT PRIMARY KEY, profile TEXT NOT NULL, port TEXT NOT NULL, serial TEXT,
        registered_by TEXT NOT NULL, registered_at TEXT NOT NULL,
        removed INTEGER NOT NULL DEFAULT 0, removed_by TEXT, removed_at TEXT, model TEXT,
        profile_path TEXT NOT NULL DEFAULT '', profile_sha256 TEXT NOT NULL DEFAULT '',
        port_real TEXT, room TEXT)""",
    _refuse("devices", "DELETE", "devices are never deleted: mark them removed"),
    # One registered device per port (per room: ports are local to a PC) and per identity.
    """CREATE UNIQUE INDEX devices_one_per_port ON devices (COALESCE(room, ''), port)
        WHERE removed = 0""",
    """CREATE UNIQUE INDEX devices_one_per_identity ON devices (model, serial)
        WHERE removed = 0 AND model IS NOT NULL AND serial IS NOT NULL""",
    "CREATE INDEX devices_port_real ON devices (port_real)",
    """CREATE TABLE bookings (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, profile TEXT, plan TEXT,
        settings TEXT NOT NULL, modalities TEXT NOT NULL, patient TEXT NOT NULL,
        starts_at TEXT NOT NULL, ends_at TEXT NOT NULL, duration_s DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('booked', 'cancelled', 'started', 'done')),
        created_by TEXT NOT NULL, created_at TEXT NOT NULL, cancelled_by TEXT,
        cancel_reason TEXT, session_ids TEXT NOT NULL DEFAULT '[]',
        profiles TEXT NOT NULL DEFAULT '{}',
        CHECK ((profile IS NULL) <> (plan IS NULL)))""",
    "CREATE INDEX bookings_start ON bookings (starts_at)",
    "CREATE INDEX bookings_patient ON bookings (patient, starts_at)",
    _refuse("bookings", "DELETE", "bookings are never deleted: cancel them"),
    "CREATE EXTENSION IF NOT EXISTS btree_gist",
    """CREATE TABLE booking_devices (
        booking_id BIGINT NOT NULL REFERENCES bookings (id), position INTEGER NOT NULL,
        role TEXT NOT NULL, device TEXT NOT NULL REFERENCES devices (name),
        during tstzrange, active BOOLEAN NOT NULL DEFAULT TRUE,
        PRIMARY KEY (booking_id, position),
        CONSTRAINT booking_devices_no_double_booking
            EXCLUDE USING gist (device WITH =, during WITH &&) WHERE (active))""",
    "CREATE INDEX booking_devices_device ON booking_devices (device)",
    # The booking's window and whether it holds the device come from the booking itself.
    """CREATE FUNCTION booking_devices_fill() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE b bookings%ROWTYPE;
        BEGIN
            IF TG_OP = 'UPDATE' AND (NEW.booking_id, NEW.position, NEW.role, NEW.device)
                    IS DISTINCT FROM (OLD.booking_id, OLD.position, OLD.role, OLD.device) THEN
                RAISE EXCEPTION 'the devices of a booking never change'
                    USING ERRCODE = 'restrict_violation';
            END IF;
            SELECT * INTO b FROM bookings WHERE id = NEW.booking_id;
            NEW.during := tstzrange(b.starts_at::timestamptz, b.ends_at::timestamptz);
            NEW.active := b.status IN ('booked', 'started');
            RETURN NEW;
        END $$""",
    """CREATE TRIGGER booking_devices_fill BEFORE INSERT OR UPDATE ON booking_devices
        FOR EACH ROW EXECUTE FUNCTION booking_devices_fill()""",
    """CREATE FUNCTION bookings_status_follow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE booking_devices SET active = NEW.status IN ('booked', 'started')
                WHERE booking_id = NEW.id;
            RETURN NEW;
        END $$""",
    """CREATE TRIGGER bookings_status_follow AFTER UPDATE OF status ON bookings
        FOR EACH ROW EXECUTE FUNCTION bookings_status_follow()""",
    _refuse("booking_devices", "DELETE", "the devices of a booking never change"),
    """CREATE TABLE calibrations (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, device TEXT NOT NULL,
        profile TEXT NOT NULL, technician TEXT NOT NULL, instrument TEXT NOT NULL,
        instrument_id TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL,
        passed INTEGER NOT NULL, performed_at TEXT NOT NULL, next_due TEXT NOT NULL,
        recorded_at TEXT NOT NULL)""",
    "CREATE INDEX calibrations_device ON calibrations (device, performed_at)",
    _refuse("calibrations", "UPDATE", "calibration records are append-only"),
    _refuse("calibrations", "DELETE", "calibration records are append-only"),
    # Names compare without case, as SQLite's COLLATE NOCASE (ASCII) does there.
    """CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('clinician', 'technician', 'admin')),
        password_hash TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0,
        created_by TEXT NOT NULL, created_at TEXT NOT NULL,
        changed_by TEXT NOT NULL, changed_at TEXT NOT NULL)""",
    "CREATE UNIQUE INDEX users_name_nocase ON users (lower(name))",
    _refuse("users", "DELETE", "accounts are never deleted: disable them"),
    """CREATE TABLE session_notes (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (id), body_site TEXT,
        skin_before TEXT, skin_after TEXT,
        pain_before INTEGER CHECK (pain_before BETWEEN 0 AND 10),
        pain_after INTEGER CHECK (pain_after BETWEEN 0 AND 10),
        text TEXT NOT NULL DEFAULT '', actor TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
    "CREATE INDEX session_notes_session ON session_notes (session_id, id)",
    _refuse("session_notes", "UPDATE", "clinical notes are append-only: add a new note"),
    _refuse("session_notes", "DELETE", "clinical notes are append-only: add a new note"),
)

# Operational state shared by the rooms (schema 6 on both backends; not records, not audited).
ROOM_TABLES: tuple[str, ...] = (
    """CREATE TABLE rooms (
        name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, url TEXT NOT NULL,
        started_at TEXT NOT NULL, heartbeat_at TEXT NOT NULL,
        activity TEXT NOT NULL DEFAULT '[]')""",
    # Spool entries already replayed (controller.records.spool): replay is exactly-once.
    """CREATE TABLE spool_replayed (
        entry TEXT PRIMARY KEY, replayed_at TEXT NOT NULL)""",
)

# TRUNCATE skips row triggers: refused on every table whose rows are never deleted.
NO_TRUNCATE: tuple[str, ...] = tuple(
    f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT "
    "EXECUTE FUNCTION modctl_refuse('the records are never deleted')"
    for table in ("audit", "audit_high", "sessions", "events", "samples", "devices",
                  "bookings", "booking_devices", "calibrations", "users", "session_notes"))

# Which database this is, whatever URL reached it: a room's local journal is kept per database,
# so a journal is only ever written into the database it was written for.
IDENTITY: tuple[str, ...] = (
    "CREATE TABLE database_identity (id TEXT NOT NULL)",
    "INSERT INTO database_identity VALUES (gen_random_uuid()::text)",
    _refuse("database_identity", "UPDATE", "the database identity never changes"),
)

PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (*COMPAT_FUNCTIONS, *TABLES, *NO_TRUNCATE, *ROOM_TABLES, *IDENTITY),
    (), (), (), (), (),
)
