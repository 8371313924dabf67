"""Registered devices: the clinic's devices by name, with the profile file pinned at registration.

A device is never deleted (its name stays taken: calibrations and bookings are kept by name);
two registered devices may not share a port (by name or resolved real path) or a reported model
and serial number, since the calibration gate could not tell them apart.
"""

from __future__ import annotations

from controller.records import integrity
from controller.records.clinic_tables import DEVICE_NAME, ClinicError, DeviceRow, device_row
from controller.records.database import Database, RecordsConflict, append_audit, now_iso
from controller.records.sql import Connection


class DeviceTable:
    """The `devices` table, written through `db` (composed into `RecordStore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_device(self, name: str, profile: str, port: str, actor: str, *,
                   serial: str | None = None, model: str | None = None,
                   profile_path: str = "", profile_sha256: str = "",
                   port_real: str | None = None, room: str | None = None) -> DeviceRow:
        """Register a device; `profile_path`/`profile_sha256` pin its profile file, `model` and
        `serial` are what it reported, `port_real` the port's resolved real path, `room` the
        treatment room whose PC it is plugged into (ports are only unique within a room)."""
        if not DEVICE_NAME.fullmatch(name):
            raise ClinicError(f"device name '{name}': use 1-40 letters, digits, '.', '_' or "
                              "'-', starting with a letter or digit")
        if not port.strip():
            raise ClinicError("port: empty; give the device path or pyserial URL")
        try:
            with self._db.write("register a device", may_conflict=True) as conn:
                old = conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
                if old is not None:
                    state = (f"was removed on {old['removed_at'][:10]}; names are never "
                             "reused, because calibrations and bookings are kept by name"
                             if old["removed"] else "is already registered")
                    raise ClinicError(f"device '{name}' {state}")
                self._refuse_clash(conn, name, port, port_real, model, serial, room)
                conn.execute("INSERT INTO devices (name, profile, port, serial, registered_by,"
                             " registered_at, model, profile_path, profile_sha256, port_real,"
                             " room) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (name, profile, port, serial, actor, now_iso(), model,
                              profile_path, profile_sha256, port_real, room))
                append_audit(conn, actor, "device.add", f"device/{name}",
                             {"profile": profile, "port": port, "serial": serial,
                              "model": model, "profile_path": profile_path,
                              "profile_sha256": profile_sha256, "port_real": port_real,
                              "room": room},
                             [integrity.ref(conn, "devices", name)])
                return device_row(conn.execute("SELECT * FROM devices WHERE name = ?",
                                               (name,)).fetchone())
        except RecordsConflict as exc:  # another room registered it meanwhile
            raise ClinicError(f"device '{name}' cannot be registered: the database refused "
                              f"it ({exc}); list the devices and try again") from None

    @staticmethod
    def _refuse_clash(conn: Connection, name: str, port: str, port_real: str | None,
                      model: str | None, serial: str | None, room: str | None) -> None:
        """Another registered device on the same port (by name or real path) of the same
        room, or with the same reported identity, is refused: the gate could not tell them
        apart."""
        other = conn.execute(
            "SELECT name FROM devices WHERE removed = 0 AND name <> ?2 AND (port IN (?1, ?3)"
            " OR port_real IN (?1, ?3)) AND COALESCE(room, '') = ?4",
            (port, name, port_real, room or "")).fetchone()
        if other is not None:
            raise ClinicError(f"port {port} is already the port of device '{other[0]}'; "
                              "remove that device first")
        if model and serial:
            twin = conn.execute("SELECT name FROM devices WHERE removed = 0 AND name <> ?"
                                " AND model = ? AND serial = ?",
                                (name, model, serial)).fetchone()
            if twin is not None:
                raise ClinicError(f"a {model} with serial {serial} is already registered as "
                                  f"device '{twin[0]}'")

    def pin_device(self, name: str, *, profile: str, profile_path: str, profile_sha256: str,
                   serial: str | None, model: str | None, port: str, port_real: str | None,
                   actor: str) -> DeviceRow:
        """A technician registers the device again (its profile file changed, or it moved):
        the new profile hash, identity and port replace the old ones, audited "device.pin"."""
        if not port.strip():
            raise ClinicError("port: empty; give the device path or pyserial URL")
        with self._db.write("pin a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
            if row is None or row["removed"]:
                raise ClinicError(f"device '{name}' is not registered"
                                  + (" (it was removed)" if row is not None else ""))
            self._refuse_clash(conn, name, port, port_real, model, serial, row["room"])
            conn.execute("UPDATE devices SET profile = ?, profile_path = ?, profile_sha256 = ?,"
                         " serial = ?, model = ?, port = ?, port_real = ? WHERE name = ?",
                         (profile, profile_path, profile_sha256, serial, model, port,
                          port_real, name))
            append_audit(conn, actor, "device.pin", f"device/{name}",
                         {"profile": profile, "port": port, "serial": serial,
                          "model": model, "profile_path": profile_path,
                          "profile_sha256": profile_sha256, "port_real": port_real,
                          "was": {"profile": row["profile"],
                                  "profile_sha256": row["profile_sha256"],
                                  "port": row["port"], "serial": row["serial"]}},
                         [integrity.ref(conn, "devices", name)])
            return device_row(conn.execute("SELECT * FROM devices WHERE name = ?",
                                           (name,)).fetchone())

    def remove_device(self, name: str, actor: str, reason: str = "") -> DeviceRow:
        """Take a device out of service; refused while it has bookings still to run."""
        with self._db.write("remove a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
            if row is None or row["removed"]:
                raise ClinicError(f"device '{name}' is not registered"
                                  + (" (already removed)" if row is not None else ""))
            pending = [str(r[0]) for r in conn.execute(
                "SELECT b.id FROM bookings b JOIN booking_devices d ON d.booking_id = b.id"
                " WHERE d.device = ? AND b.status IN ('booked', 'started') ORDER BY b.starts_at",
                (name,))]
            if pending:
                raise ClinicError(f"device '{name}' still has bookings {', '.join(pending)}; "
                                  "cancel them first (modctl book cancel ID)")
            conn.execute("UPDATE devices SET removed = 1, removed_by = ?, removed_at = ?"
                         " WHERE name = ?", (actor, now_iso(), name))
            append_audit(conn, actor, "device.remove", f"device/{name}",
                         {"reason": reason}, [integrity.ref(conn, "devices", name)])
            return device_row(conn.execute("SELECT * FROM devices WHERE name = ?",
                                           (name,)).fetchone())

    def devices(self, include_removed: bool = False) -> list[DeviceRow]:
        with self._db.read("list devices") as conn:
            rows = conn.execute("SELECT * FROM devices WHERE ? = 1 OR removed = 0 ORDER BY name",
                                (int(include_removed),)).fetchall()
        return [device_row(r) for r in rows]

    def device(self, name: str) -> DeviceRow | None:
        """The device of that name, removed ones included (check `removed`)."""
        with self._db.read("read a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
        return None if row is None else device_row(row)

    def device_on_port(self, port: str) -> DeviceRow | None:
        """The registered (not removed) device on this port, if any."""
        with self._db.read("read a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE port = ? AND removed = 0",
                               (port,)).fetchone()
        return None if row is None else device_row(row)

    def device_on_real_port(self, real: str) -> DeviceRow | None:
        """The registered (not removed) device whose port resolves to `real`, if any."""
        with self._db.read("read a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE removed = 0 AND port_real = ?"
                               " ORDER BY name LIMIT 1", (real,)).fetchone()
        return None if row is None else device_row(row)

    def device_by_identity(self, model: str, serial: str) -> DeviceRow | None:
        """The registered (not removed) device that reported this model and serial number."""
        with self._db.read("read a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE removed = 0 AND model = ?"
                               " AND serial = ? ORDER BY name LIMIT 1",
                               (model, serial)).fetchone()
        return None if row is None else device_row(row)
