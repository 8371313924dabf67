// The Rooms page: what the other treatment rooms sharing the records database are doing, read
// from GET /api/rooms every few seconds. Read only: no control here acts on another room's
// device (the service holding a device is the only one that drives it).
import { api, problem } from "./api.js";
import { MODALITY, clock, el } from "./format.js";
import { startShell } from "./shell.js";

// How often the rooms are read again (their services write every 5 s), and how often the
// heartbeat ages and countdowns shown are brought forward in between.
const REFRESH_MS = 2000;
const TICK_MS = 1000;

// [marker, words] per device state: never colour alone (the room view's words).
const STATES = {
  idle: ["○", "Idle"],
  arming: ["◔", "Busy — starting"],
  delivering: ["▶", "Busy — delivering"],
  holding: ["❚❚", "Busy — on hold, time paused"],
  stopping: ["■", "Busy — stopping"],
  fault: ["⚠", "Fault"],
  absent: ["✕", "Absent"],
  reserved: ["◆", "Reserved by a plan"],
  released: ["⚙", "Released to a technician"],
};

const $ = (id) => document.getElementById(id);
const shell = startShell();
let last = null;        // {data, at}: the latest answer and when it came (performance.now())

function since() {
  return last ? (performance.now() - last.at) / 1000 : 0;
}

function ago(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

// The session's time left now: counted down from the room's report while it delivers (its
// report is `age` seconds old); as reported in any other state (a hold pauses the time).
function remaining(device, age, stale) {
  const s = device.session;
  if (!s || s.remaining_s === null || s.remaining_s === undefined) return "–";
  if (stale) return `${clock(s.remaining_s)} when last heard`;
  const left = device.state === "delivering" ? s.remaining_s - age : s.remaining_s;
  return clock(left);
}

function deviceRow(device, age, stale) {
  const [marker, words] = STATES[device.state] || ["?", device.state];
  const s = device.session;
  return el("tr", { "data-device": device.device, class: s ? "busy" : "" },
    el("th", { scope: "row", text: device.device }),
    el("td", { text: `${(device.profile || "").toUpperCase()} · ${MODALITY[device.modality] || device.modality || ""}` }),
    el("td", {}, el("span", { class: "marker", "aria-hidden": "true", text: marker }), words),
    el("td", { text: s?.patient || "–" }),
    el("td", { text: s?.operator || "–" }),
    el("td", { class: "remaining", text: remaining(device, age, stale) }));
}

function roomSection(room) {
  const age = (room.age_s ?? 0) + since();
  const id = `room-${room.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const status = room.stale
    ? el("p", { class: "room-status stale" },
      el("span", { class: "marker", "aria-hidden": "true", text: "✕" }),
      `Not responding — last heartbeat ${ago(age)}. What it last reported is shown, and may be out of date.`)
    : el("p", { class: "room-status" },
      `Last heartbeat ${ago(age)} · ${room.host}`);
  const devices = room.devices || [];
  const table = devices.length
    ? el("table", { class: "list", "aria-labelledby": `${id}-name` },
      el("thead", {}, el("tr", {}, ...["Device", "Model", "State", "Patient", "Operator",
        "Remaining"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...devices.map((d) => deviceRow(d, age, room.stale))))
    : el("p", { text: "No device is held in this room." });
  return el("section", { class: `room-box${room.stale ? " stale" : ""}`, "aria-labelledby": `${id}-name`, "data-room": room.name },
    el("h2", { id: `${id}-name`, text: room.stale ? `${room.name} (not responding)` : room.name }),
    status, table);
}

function render() {
  if (!last) return;
  const { data } = last;
  const others = data.rooms.filter((r) => !r.this_room);
  const box = $("rooms");
  if (!others.length) {
    box.replaceChildren(el("p", { text: data.shared
      ? "No other room has reported to the records database."
      : "This service is the clinic's only room: its records database is not shared." }));
  } else {
    box.replaceChildren(...others.map(roomSection));
  }
}

async function load() {
  const { status, data } = await api("GET", "/api/rooms");
  const out = $("rooms-problem");
  if (status !== 200) {
    out.textContent = status === 0 ? "The clinic service does not answer; the rooms shown may be old." : problem(data);
    out.hidden = false;
    return;
  }
  out.textContent = data.problem || "";
  out.hidden = !data.problem;
  last = { data, at: performance.now() };
  $("rooms-updated").textContent = `Read at ${new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })}`;
  render();
}

shell.live.start();
load();
setInterval(load, REFRESH_MS);
setInterval(render, TICK_MS);
