// Start a treatment: from today's bookings, from a plan (a device per role) or by hand.
// Nothing starts until the service accepts the request; every problem it reports is shown
// beside the field it concerns, in the clinician's words. The clinician confirms the
// patient id before the request goes out.
import { api, problem } from "./api.js";
import {
  MODALITY, clinicalWords, clock, el, guessModality, num, numbers, parameterLabel, prescription,
  unit,
} from "./format.js";
import { rememberPlan } from "./plans.js";
import { startShell } from "./shell.js";

const shell = startShell();
shell.live.start();
const $ = (id) => document.getElementById(id);
const MODES = ["booking", "plan", "hand"];
let devices = [];

// -- switching between the three ways ------------------------------------------------------
function showMode(mode) {
  for (const m of MODES) {
    $(`mode-${m}`).hidden = m !== mode;
    document.querySelector(`[data-mode="${m}"]`).setAttribute("aria-pressed", String(m === mode));
  }
  hideConfirm();
}

for (const button of document.querySelectorAll("[data-mode]")) {
  button.addEventListener("click", () => {
    history.replaceState(null, "", `#${button.dataset.mode}`);
    showMode(button.dataset.mode);
  });
}

// -- the confirmation with the patient -----------------------------------------------------
let confirmAction = null;

function askConfirm(patient, what, action) {
  confirmAction = action;
  $("confirm-patient").textContent = patient ? `Patient ${patient}` : "No patient id given";
  $("confirm-what").textContent = what;
  $("confirm-go").textContent = patient ? `Confirm patient ${patient} and start` : "Start without a patient id";
  $("confirm-go").disabled = false;
  $("confirm-status").textContent = "";
  $("confirm").hidden = false;
  $("confirm").focus();
}

function hideConfirm() {
  $("confirm").hidden = true;
  confirmAction = null;
}

$("confirm-back").addEventListener("click", hideConfirm);
$("confirm-go").addEventListener("click", async () => {
  if (!confirmAction) return;
  $("confirm-go").disabled = true;
  $("confirm-status").textContent = "Starting… the service checks the device before the output starts.";
  const done = await confirmAction();
  if (!done) hideConfirm();
});

// -- problems beside their fields -----------------------------------------------------------
function clearErrors(form) {
  for (const p of form.querySelectorAll(".field-error, .form-error")) p.textContent = "";
  for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
}

// Put each problem beside the field it names (`fields`: name -> input), the rest on top.
function showProblems(form, problems, fields) {
  const general = [];
  let first = null;
  for (const text of problems) {
    const name = Object.keys(fields).find((n) => mentions(text, n));
    const input = name && fields[name];
    if (!input) {
      general.push(clinicalWords(text));
      continue;
    }
    const box = $(`${input.id}-error`);
    box.textContent = [box.textContent, clinicalWords(text)].filter(Boolean).join(" · ");
    input.setAttribute("aria-invalid", "true");
    first = first || input;
  }
  form.querySelector(".form-error").textContent = general.join(" · ");
  (first || form.querySelector(".form-error")).focus?.();
}

function mentions(text, name) {
  const words = name === "duration" ? "duration(_s)?" : name;
  return new RegExp(`(^|[^a-z_])${words}([^a-z_]|$)`, "i").test(text);
}

function errorsOf(status, data) {
  if (status === 0) return ["the clinic service does not answer: nothing was started"];
  return (data.problems && data.problems.length) ? data.problems : [problem(data)];
}

// -- bookings --------------------------------------------------------------------------------
function parseTime(text) {
  const iso = String(text).replace(" ", "T").replace(/(\.\d{3})\d+/, "$1");
  return new Date(iso);
}

async function loadBookings() {
  const day = document.body.dataset.today;
  const { status, data } = await api("GET", `/api/bookings?day=${encodeURIComponent(day)}`);
  const box = $("bookings");
  if (status !== 200) {
    box.replaceChildren(el("p", { class: "form-error", text: problem(data) }));
    return;
  }
  const rows = data.bookings || [];
  if (!rows.length) {
    box.replaceChildren(el("p", { text: "No bookings today." }));
    return;
  }
  const body = el("tbody");
  for (const b of rows) {
    const what = b.plan ? `Plan ${b.plan}` : `${MODALITY[b.modalities?.[0]] || b.profile} · ${prescription(b.modalities?.[0], numbers(b.settings))}`;
    const error = el("p", { class: "field-error", id: `booking-${b.id}-error` });
    const start = el("button", { type: "button", class: "go", text: "Start…",
      "aria-label": `Start booking ${b.id} for ${b.patient}` });
    start.hidden = b.status !== "booked";
    start.addEventListener("click", () => {
      error.textContent = "";
      askConfirm(b.patient, `Booking ${b.id}: ${what} on ${Object.values(b.devices).join(", ")} for ${clock(b.duration_s)}.`,
        async () => {
          const { status: code, data: got } = await api("POST", `/api/bookings/${b.id}/start`);
          if (code === 201) {
            if (got.plan) rememberPlan(got.plan.id);
            location.assign("/");
            return true;
          }
          error.textContent = errorsOf(code, got).map(clinicalWords).join(" · ");
          start.focus();
          return false;
        });
    });
    body.append(el("tr", {},
      el("td", { text: parseTime(b.starts_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) }),
      el("td", { text: b.patient }), el("td", { text: what }),
      el("td", { text: Object.values(b.devices).join(", ") }),
      el("td", { text: clock(b.duration_s) }), el("td", { text: b.status }),
      el("td", {}, start, error)));
  }
  box.replaceChildren(el("table", { class: "list" },
    el("caption", { text: `Bookings for ${day}` }),
    el("thead", {}, el("tr", {}, ...["Time", "Patient", "Treatment", "Devices", "Duration",
      "Status", "Action"].map((h) => el("th", { scope: "col", text: h })))), body));
}

// -- plans -----------------------------------------------------------------------------------
let plans = [];

async function loadPlans() {
  const { status, data } = await api("GET", "/api/plans");
  if (status !== 200) return;
  plans = data.plans || [];
  const select = $("plan-select");
  select.replaceChildren(el("option", { value: "", text: "Choose a plan" }),
    ...plans.map((p) => el("option", { value: p.name, disabled: Boolean(p.problems),
      text: p.problems ? `${p.name} (cannot be used: ${p.problems[0]})` : `${p.title}${p.example ? " — example" : ""}` })));
  select.addEventListener("change", showPlan);
}

function showPlan() {
  const plan = plans.find((p) => p.name === $("plan-select").value);
  const steps = $("plan-steps"), roles = $("plan-roles");
  clearErrors($("plan-form"));
  if (!plan) {
    steps.replaceChildren();
    roles.replaceChildren();
    return;
  }
  steps.replaceChildren(el("ol", { class: "steps" }, ...plan.steps.map((s) => el("li", {},
    el("strong", { text: s.name }),
    ` on the ${s.role} device: ${prescription(guessModality(s.settings), numbers(s.settings))} for ${clock(s.duration_s)}` +
    (s.pause_after_s ? `, then a pause of ${clock(s.pause_after_s)}` : ""),
    s.notes ? el("span", { class: "hint", text: ` ${s.notes}` }) : null))));
  roles.replaceChildren(...Object.entries(plan.roles).map(([role, profile]) => {
    const id = `plan-role-${role}`;
    const fit = devices.filter((d) => d.profile === profile);
    return el("div", { class: "field" },
      el("label", { for: id, text: `Device for ${role} (${profile.toUpperCase()})` }),
      el("select", { id, "data-role": role, "aria-describedby": `${id}-error` },
        ...fit.map((d) => el("option", { value: d.name, text: `${d.name} — ${d.state}` }))),
      el("p", { class: "field-error", id: `${id}-error` }));
  }));
}

$("plan-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = $("plan-form");
  clearErrors(form);
  const plan = plans.find((p) => p.name === $("plan-select").value);
  if (!plan) {
    $("plan-select-error").textContent = "Choose a plan first.";
    $("plan-select").focus();
    return;
  }
  const chosen = {};
  const fields = { patient: $("plan-patient") };
  for (const select of form.querySelectorAll("[data-role]")) {
    chosen[select.dataset.role] = select.value;
    fields[select.dataset.role] = select;
  }
  const patient = $("plan-patient").value.trim();
  const body = { plan: plan.name, devices: chosen };
  if (patient) body.patient = patient;
  askConfirm(patient, `Plan ${plan.title}: ${plan.steps.length} steps on ${Object.values(chosen).join(", ")}.`,
    async () => {
      const { status, data } = await api("POST", "/api/plans/run", body);
      if (status === 201) {
        rememberPlan(data.id);
        location.assign("/");
        return true;
      }
      showProblems(form, errorsOf(status, data), status === 422 ? fields : {});
      return false;
    });
});

// -- by hand ---------------------------------------------------------------------------------
let handFields = {};

function rangeText(p) {
  const u = unit(p.unit);
  const parts = [];
  if (p.allowed) parts.push(`one of ${p.allowed.map((v) => num(v, 3)).join(", ")}${u ? ` ${u}` : ""}`);
  else if (p.choices) parts.push(`one of ${p.choices.join(", ")}`);
  else if (p.min !== null || p.max !== null) {
    parts.push(`allowed ${p.min ?? "…"} – ${p.max ?? "…"}${u ? ` ${u}` : ""}`);
  }
  if (p.step) parts.push(`step ${p.step}`);
  parts.push(p.required ? "required" : `default ${p.default}${u && !p.choices ? ` ${u}` : ""}`);
  return parts.join(" · ");
}

function fieldFor(p) {
  const id = `p-${p.name}`;
  const u = unit(p.unit);
  const label = el("label", { for: id, text: `${parameterLabel(p.name)}${u ? ` (${u})` : ""}` });
  const describe = `${id}-range ${id}-error`;
  let input;
  const options = p.allowed ? p.allowed.map((v) => num(v, 3)) : p.choices;
  if (options) {
    input = el("select", { id, name: p.name, "aria-describedby": describe },
      ...options.map((v) => el("option", { value: v, text: `${v}${u && p.allowed ? ` ${u}` : ""}` })));
    if (p.default !== null) input.value = p.allowed ? num(p.default, 3) : p.default;
  } else {
    input = el("input", { id, name: p.name, type: "text", inputmode: "decimal", autocomplete: "off",
      "aria-describedby": describe, value: p.default !== null ? num(p.default, 3) : "" });
    if (p.required) input.setAttribute("aria-required", "true");
  }
  return { input, node: el("div", { class: "field" }, label, input,
    el("p", { class: "range", id: `${id}-range`, text: rangeText(p) }),
    el("p", { class: "field-error", id: `${id}-error` })) };
}

async function loadForm() {
  const name = $("hand-device").value;
  const box = $("hand-fields");
  clearErrors($("hand-form"));
  handFields = {};
  if (!name) {
    box.replaceChildren();
    return;
  }
  const { status, data } = await api("GET", `/api/devices/${encodeURIComponent(name)}/form`);
  if (status !== 200) {
    box.replaceChildren(el("p", { class: "form-error", text: problem(data) }));
    return;
  }
  const nodes = data.parameters.map((p) => {
    const { input, node } = fieldFor(p);
    handFields[p.name] = input;
    return node;
  });
  box.replaceChildren(...nodes);
  const d = data.duration_s;
  $("hand-duration-range").textContent = `minutes and seconds, like 10m, 1m30s or 90s · allowed ${clock(d.min)} – ${clock(d.max)}`;
  const device = devices.find((x) => x.name === name);
  $("hand-clear-box").hidden = !(device && device.state === "fault");
  $("hand-device-error").textContent = device && device.state !== "idle" && device.state !== "fault"
    ? `${name} is ${device.state} now: the service will refuse a start until it is ready.` : "";
}

$("hand-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = $("hand-form");
  clearErrors(form);
  const device = $("hand-device").value;
  if (!device) {
    $("hand-device-error").textContent = "Choose a device first.";
    $("hand-device").focus();
    return;
  }
  const settings = {};
  for (const [name, input] of Object.entries(handFields)) {
    const value = input.value.trim();
    if (value !== "") settings[name] = value;
  }
  const patient = $("hand-patient").value.trim();
  const body = { device, duration: $("hand-duration").value.trim(), settings };
  if (patient) body.patient = patient;
  if (!$("hand-clear-box").hidden && $("hand-clear").checked) body.clear_fault = true;
  const info = devices.find((x) => x.name === device);
  const shown = Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, Number.isFinite(Number(v)) ? Number(v) : v]));
  askConfirm(patient, `${device} (${MODALITY[info?.modality] || ""}): ${prescription(info?.modality, shown)} for ${body.duration || "?"}.`,
    async () => {
      const { status, data } = await api("POST", "/api/sessions", body);
      if (status === 201) {
        location.assign("/");
        return true;
      }
      // 422: the request (each problem beside its field); 409 and others: the device.
      const fields = status === 422
        ? { ...handFields, duration: $("hand-duration"), patient: $("hand-patient") }
        : { device: $("hand-device") };
      showProblems(form, errorsOf(status, data), fields);
      return false;
    });
});

async function loadDevices() {
  const { status, data } = await api("GET", "/api/devices");
  devices = status === 200 ? data.devices : [];
  const select = $("hand-device");
  const wanted = new URLSearchParams(location.search).get("device") || select.value;
  select.replaceChildren(el("option", { value: "", text: "Choose a device" }),
    ...devices.map((d) => el("option", { value: d.name,
      text: `${d.name} — ${MODALITY[d.modality] || d.modality} — ${d.state}` })));
  if (devices.some((d) => d.name === wanted)) select.value = wanted;
  await loadForm();
}

$("hand-device").addEventListener("change", loadForm);
shell.live.on("device", (data) => {
  const d = devices.find((x) => x.name === data.device);
  if (d) d.state = data.state;
});

window.addEventListener("hashchange", () => {
  const mode = location.hash.slice(1);
  if (MODES.includes(mode)) showMode(mode);
});
const initial = location.hash.slice(1);
showMode(MODES.includes(initial) ? initial : (new URLSearchParams(location.search).get("device") ? "hand" : "booking"));
await loadDevices();
await Promise.all([loadBookings(), loadPlans()]);
document.body.dataset.ready = "true";
