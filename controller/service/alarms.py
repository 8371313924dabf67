"""Alarms the service raises from what its sessions and devices report, kept until a person
acknowledges them (audited with who), so that every screen shows the same ones and a page
reload loses none.

Priorities follow the convention clinicians know from patient monitors (IEC 60601-1-8):
high — an output not confirmed off, an interlock or device fault, a device lost while
delivering; medium — a patient stop, a lead-off, an ultrasound coupling hold, records
unavailable, a latched fault on an idle device; low — an idle device absent. Acknowledging
silences an alarm; it does not clear the condition (the device state still shows it).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

HIGH, MEDIUM, LOW = "high", "medium", "low"
# Shown beside the words so that priority never rests on colour alone.
MARKER = {HIGH: "***", MEDIUM: "**", LOW: "*"}
# Acknowledged alarms kept for `GET /api/alarms?all=1` (the audit trail keeps every one).
KEEP_ACKNOWLEDGED = 200

Publish = Callable[[str, dict[str, object]], None]


@dataclass
class Alarm:
    id: int
    priority: str
    marker: str
    device: str
    patient: str | None
    session: str | None
    reason: str
    raised_at: float
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None


class AlarmBook:
    """Watches the service's events (`observe`) and keeps the alarms they raise."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._open: dict[int, Alarm] = {}
        self._done: collections.deque[Alarm] = collections.deque(maxlen=KEEP_ACKNOWLEDGED)
        self._holding: set[str] = set()       # sessions whose coupling hold has alarmed
        self._device_state: dict[str, str] = {}

    def observe(self, kind: str, data: Mapping[str, object]) -> None:
        """Called with every event the service publishes (any thread)."""
        device = str(data.get("device", ""))
        if kind == "session" and data.get("final"):
            self._session_end(device, data)
        elif kind == "telemetry" and data.get("state") == "holding":
            sid = str(data.get("id", ""))
            if sid and sid not in self._holding:
                self._holding.add(sid)
                self.raise_alarm(MEDIUM, device, "ultrasound coupling lost: output held, "
                                 "treatment time paused", data.get("patient"), sid)
        elif kind == "device":
            state = str(data.get("state", ""))
            before = self._device_state.get(device)
            self._device_state[device] = state
            if state == before:
                return
            if state == "absent" and before is not None:
                self.raise_alarm(LOW, device, f"device absent: {data.get('problem', '')}")
            elif state == "fault":
                self.raise_alarm(MEDIUM, device, str(data.get("problem") or "device fault"))

    def _session_end(self, device: str, data: Mapping[str, object]) -> None:
        outcome, reason = data.get("outcome"), str(data.get("reason", ""))
        patient, sid = data.get("patient"), str(data.get("id", "")) or None
        self._holding.discard(sid or "")
        if data.get("stop_confirmed") is False:
            self.raise_alarm(HIGH, device, f"output NOT confirmed off: {reason}", patient, sid)
        elif outcome == "fault":
            priority = MEDIUM if reason.startswith("records failed") else HIGH
            self.raise_alarm(priority, device, reason, patient, sid)
        elif outcome == "aborted" and data.get("stop_source") == "patient":
            self.raise_alarm(MEDIUM, device, reason, patient, sid)

    def raise_alarm(self, priority: str, device: str, reason: str, patient: object = None,
                    session: str | None = None) -> Alarm:
        alarm = Alarm(next(self._ids), priority, MARKER[priority], device,
                      str(patient) if patient else None, session, reason, time.time())
        with self._lock:
            self._open[alarm.id] = alarm
        self._publish("alarm", asdict(alarm))
        return alarm

    def acknowledge(self, alarm_id: int, by: str) -> Alarm | None:
        with self._lock:
            alarm = self._open.pop(alarm_id, None)
            if alarm is None:
                return None
            alarm.acknowledged_by, alarm.acknowledged_at = by, time.time()
            self._done.append(alarm)
        self._publish("alarm_ack", asdict(alarm))
        return alarm

    def open(self) -> list[Alarm]:
        with self._lock:
            return sorted(self._open.values(), key=lambda a: (a.priority != HIGH,
                                                              a.priority != MEDIUM, a.id))

    def acknowledged(self) -> list[Alarm]:
        with self._lock:
            return list(self._done)
