// The technician's page: the registered devices, their presence and calibration, releasing
// a device's port to a CLI tool (calibration, `modctl devices pin`) and holding it again,
// and registering a new device.
import { api, problem } from "./api.js";
import { MODALITY, el } from "./format.js";
import { startShell } from "./shell.js";

const shell = startShell();
const $ = (id) => document.getElementById(id);

function calibrationText(cal) {
  if (!cal || !cal.required) return "not required";
  return cal.status === "ok" ? `ok · next due ${cal.next_due}` : `${String(cal.status).toUpperCase()}: ${cal.reason || ""}`;
}

function row(d) {
  const status = el("p", { class: "field-error", id: `dev-${d.name}-error`, role: "status" });
  const released = d.state === "released";
  const action = el("button", { type: "button", class: "go",
    text: released ? "Hold" : "Release",
    "aria-label": `${released ? "Hold" : "Release"} ${d.name}`,
    onclick: async () => {
      action.disabled = true;
      const verb = released ? "hold" : "release";
      const { status: code, data } = await api("POST", `/api/devices/${encodeURIComponent(d.name)}/${verb}`);
      action.disabled = false;
      if (code === 200) load();
      else status.textContent = problem(data);
    } });
  return el("tr", { "data-device": d.name },
    el("th", { scope: "row", text: d.name }),
    el("td", { text: `${(d.profile || "").toUpperCase()} · ${MODALITY[d.modality] || d.modality || ""}` }),
    el("td", { text: d.port }),
    el("td", { text: d.identity?.serial ? `serial ${d.identity.serial}` : "–" }),
    el("td", { text: `${d.state}${d.problem ? `: ${d.problem}` : ""}` }),
    el("td", { text: calibrationText(d.calibration) }),
    el("td", {}, action, status));
}

async function load() {
  const { status, data } = await api("GET", "/api/devices");
  const box = $("devices");
  if (status !== 200) {
    box.replaceChildren(el("p", { class: "form-error", text: problem(data) }));
    return;
  }
  box.replaceChildren(el("table", { class: "list" },
    el("caption", { text: "Registered devices" }),
    el("thead", {}, el("tr", {}, ...["Device", "Model", "Port", "Identity", "State",
      "Calibration", "Port for CLI work"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...data.devices.map(row))));
}

$("add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const out = $("add-error");
  out.textContent = "";
  const body = { name: $("dev-name").value.trim(), profile: $("dev-profile").value.trim(),
    port: $("dev-port").value.trim() };
  const { status, data } = await api("POST", "/api/devices", body);
  if (status === 201) {
    out.textContent = `${data.name} registered and held.`;
    form.reset();
    load();
  } else {
    out.textContent = problem(data);
  }
});

shell.live.on("hello", load);
shell.live.on("device", load);
shell.live.start();
