// The room view: one tile per registered device, kept up to date from the live stream.
import { api, problem } from "./api.js";
import {
  MODALITY, clock, doseText, el, liveValues, prescription, timeOfDay,
} from "./format.js";
import { PlanPanels } from "./planpanel.js";
import { startShell, user } from "./shell.js";

// [marker, words, colour class] per device state: never colour alone.
const STATES = {
  idle: ["○", "Ready", "ready"],
  arming: ["◔", "Starting — checking the device", "busy"],
  delivering: ["▶", "Delivering", "on"],
  holding: ["❚❚", "On hold — coupling lost, time paused", "hold"],
  stopping: ["■", "Stopping…", "busy"],
  fault: ["⚠", "Fault", "fault"],
  absent: ["✕", "Absent — the device does not answer", "absent"],
  reserved: ["◆", "Reserved by a running plan", "reserved"],
  released: ["⚙", "Released to a technician", "released"],
};
const BUSY = new Set(["arming", "delivering", "holding", "stopping"]);
// A session's own states folded into the device states of the API.
const SESSION_STATE = {
  connecting: "arming", identifying: "arming", arming: "arming", ramping: "delivering",
  delivering: "delivering", holding: "holding", stopping: "stopping",
};
const OUTCOME = {
  completed: "Completed", aborted: "Stopped", fault: "Ended by a fault",
  rejected: "Refused before any output", interrupted: "Interrupted",
};

class Tile {
  constructor(device, alarms) {
    this.alarms = alarms;
    this.device = device;
    this.last = null;          // the latest session end seen on this page
    this.stopping = null;      // the session id a Stop was sent for
    this.stopError = "";
    this.fetching = false;
    const id = `tile-${device.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    this.f = {
      name: el("h2", { id: `${id}-name`, text: device.name }),
      modality: el("p", { class: "modality" }),
      marker: el("span", { class: "marker", "aria-hidden": "true" }),
      state: el("span", { class: "state-words" }),
      alarm: el("p", { class: "tile-alarm" }),
      patient: el("p", { class: "patient" }),
      rx: el("p", { class: "rx" }),
      countdown: el("p", { class: "countdown", role: "timer", "aria-live": "off" }),
      bar: el("progress", { class: "elapsed-bar", max: "1", value: "0" }),
      times: el("p", { class: "times" }),
      live: el("dl", { class: "live" }),
      dose: el("p", { class: "dose" }),
      presence: el("p", { class: "presence" }),
      calibration: el("p", { class: "calibration" }),
      last: el("p", { class: "last" }),
      error: el("p", { class: "tile-error", role: "alert" }),
      stop: el("button", { class: "stop", type: "button", onclick: () => this.stop() }),
      start: el("a", { class: "start-link", href: `/start?device=${encodeURIComponent(device.name)}#hand` }),
    };
    this.f.start.textContent = "Start…";
    this.f.start.setAttribute("aria-label", `Start a treatment on ${device.name}`);
    this.f.bar.setAttribute("aria-label", `Treatment time on ${device.name}`);
    this.f.countdown.setAttribute("aria-label", `Time remaining on ${device.name}`);
    this.busyBox = el("div", { class: "busy" }, this.f.patient, this.f.rx, this.f.countdown,
      this.f.bar, this.f.times, this.f.live, this.f.dose);
    this.node = el("article", { class: "tile", id, "aria-labelledby": `${id}-name` },
      el("header", { class: "tile-head" }, this.f.name, this.f.modality),
      el("p", { class: "state" }, this.f.marker, this.f.state),
      this.f.alarm, this.busyBox, this.f.presence, this.f.calibration, this.f.last,
      this.f.error, el("div", { class: "actions" }, this.f.stop, this.f.start));
    this.render();
  }

  set(device) {
    this.device = device;
    this.render();
  }

  // A `device` event: the state (and the problem when the event carries one).
  changed(data) {
    const d = this.device;
    d.state = data.state;
    if ("problem" in data) d.problem = data.problem;
    d.present = data.state !== "absent";
    if (!BUSY.has(data.state)) d.session = null;
    else if (!d.session) this.refresh();
    if (d.session) d.session.state = data.state;
    this.render();
  }

  telemetry(data) {
    const s = this.device.session;
    if (!s || s.id !== data.id) {
      this.refresh();
      return;
    }
    s.state = data.state;
    s.remaining_s = data.remaining_s;
    s.elapsed_s = data.delivered_s;
    s.telemetry = data.telemetry;
    s.dose = data.dose;
    if (SESSION_STATE[data.state]) this.device.state = SESSION_STATE[data.state];
    this.render();
  }

  // A session ended (the `session` event, or a stop's answer): what the service confirmed.
  ended(data) {
    this.last = data;
    if (this.stopping === data.id) this.stopping = null;
    if (this.device.session && this.device.session.id === data.id) this.device.session = null;
    this.render();
  }

  async refresh() {
    if (this.fetching) return;
    this.fetching = true;
    const { status, data } = await api("GET", `/api/devices/${encodeURIComponent(this.device.name)}`);
    this.fetching = false;
    if (status === 200) this.set(data);
  }

  async stop() {
    const session = this.device.session;
    if (!session) return;
    this.stopping = session.id;
    this.stopError = "";
    this.render();
    const { status, data } = await api("POST", `/api/sessions/${encodeURIComponent(session.id)}/stop`);
    if (status === 200 && data.final) {
      this.ended({ id: session.id, device: this.device.name, outcome: data.outcome,
        reason: data.reason, delivered_s: data.delivered_s, stop_confirmed: data.stop_confirmed });
    } else if (status === 409) {
      this.refresh();            // it had ended already: its `session` event says how
    } else if (status !== 202) {
      this.stopping = null;
      this.stopError = `Stop failed: ${problem(data)} — use E-STOP ALL or the device's stop`;
      this.render();
    }                            // 202: still stopping; the `session` event confirms it
  }

  render() {
    const d = this.device, f = this.f, s = d.session;
    const [marker, words, colour] = STATES[d.state] || ["?", d.state, "fault"];
    const alarm = this.alarms.forDevice(d.name);
    this.node.className = `tile state-${colour}${alarm ? ` alarmed tile-alarm-${alarm.priority}` : ""}`;
    this.node.dataset.state = d.state;
    f.modality.textContent = `${MODALITY[d.modality] || d.modality || "unknown"} · ${(d.profile || "").toUpperCase()}`;
    f.marker.textContent = marker;
    f.state.textContent = d.problem && !BUSY.has(d.state) && d.state !== "idle" ? `${words}: ${d.problem}` : words;
    f.alarm.hidden = !alarm;
    f.alarm.textContent = alarm ? `${alarm.marker} Alarm: ${alarm.reason}` : "";
    this.busyBox.hidden = !s;
    if (s) {
      const planned = Number(s.planned_s) || 0;
      const elapsed = Math.min(Number(s.elapsed_s) || 0, planned || Infinity);
      const remaining = s.remaining_s ?? Math.max(0, planned - elapsed);
      f.patient.textContent = s.patient ? `Patient ${s.patient}` : "No patient id";
      f.rx.textContent = prescription(s.modality || d.modality, s.settings);
      f.countdown.textContent = clock(remaining);
      f.bar.max = planned || 1;
      f.bar.value = elapsed;
      f.times.textContent = `${clock(elapsed)} elapsed · ${clock(remaining)} left of ${clock(planned)}`;
      f.live.replaceChildren(...liveValues(s.modality || d.modality, s.telemetry)
        .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
      const dose = doseText(s.modality || d.modality, s.dose);
      f.dose.textContent = dose ? `Dose so far: ${dose}` : "";
    }
    f.presence.hidden = Boolean(s);
    f.presence.textContent = d.state === "absent" ? "Not present: check the cable and power."
      : d.state === "fault" ? "Present, but it cannot start until the fault is cleared."
        : d.state === "released" ? "A technician has the port (calibration or service)."
          : d.state === "reserved" ? "Held for the next step of a plan." : "Present";
    const cal = d.calibration || {};
    f.calibration.textContent = !cal.required ? "Calibration not required"
      : cal.status === "ok" ? `Calibration ok · next due ${cal.next_due}`
        : `Calibration ${String(cal.status).toUpperCase()}: ${cal.reason || "sessions are refused"}`;
    f.calibration.classList.toggle("warn", cal.required && cal.status !== "ok");
    const last = this.last;
    f.last.hidden = !last || Boolean(s);
    if (last) {
      const off = last.stop_confirmed === true ? "output confirmed off"
        : last.stop_confirmed === false ? "OUTPUT NOT CONFIRMED OFF" : "no output was started";
      f.last.textContent = `Last: ${OUTCOME[last.outcome] || last.outcome} — ${off}` +
        ` · ${clock(last.delivered_s)} delivered${last.reason ? ` · ${last.reason}` : ""}`;
      f.last.classList.toggle("warn", last.stop_confirmed === false);
    }
    f.error.hidden = !this.stopError;
    f.error.textContent = this.stopError;
    f.stop.hidden = !s;
    const stopping = Boolean(s && this.stopping === s.id);
    f.stop.disabled = stopping;
    f.stop.textContent = stopping ? "stopping…" : "Stop";
    f.stop.setAttribute("aria-label", `${stopping ? "Stopping" : "Stop"} ${d.name}`);
    f.start.hidden = Boolean(s) || !user.may("clinician") || d.state !== "idle";
  }
}

class Room {
  constructor(root, shell) {
    this.root = root;
    this.shell = shell;
    this.tiles = new Map();
    const { live, alarms } = shell;
    live.on("hello", (data) => this.hello(data.devices || []));
    live.on("device", (data) => this.tiles.get(data.device)?.changed(data));
    live.on("telemetry", (data) => this.tiles.get(data.device)?.telemetry(data));
    live.on("session", (data) => this.tiles.get(data.device)?.ended(data));
    alarms.onChange(() => this.tiles.forEach((t) => t.render()));
  }

  hello(devices) {
    const seen = new Set();
    for (const device of devices) {
      seen.add(device.name);
      const tile = this.tiles.get(device.name);
      if (tile) tile.set(device);
      else this.tiles.set(device.name, new Tile(device, this.shell.alarms));
    }
    for (const name of [...this.tiles.keys()]) {
      if (!seen.has(name)) this.tiles.delete(name);
    }
    this.root.replaceChildren(...[...this.tiles.values()].map((t) => t.node));
    document.getElementById("room-empty").hidden = this.tiles.size > 0;
    document.getElementById("room-updated").textContent = `Live since ${timeOfDay()}`;
  }
}

const shell = startShell();
new Room(document.getElementById("tiles"), shell);
new PlanPanels(document.getElementById("plans"), shell.live);
shell.live.start();
