// Numbers, units and words as clinicians read them: "40 °C", "1 MHz · 1.5 W/cm² · 20 %",
// a countdown in mm:ss, live values with their units.

const UNIT_WORDS = {
  degC: "°C", "W/cm2": "W/cm²", percent: "%", us: "µs", cm2: "cm²", ohm: "Ω", uC: "µC",
};

export function unit(text) {
  return UNIT_WORDS[text] ?? text ?? "";
}

// A number without trailing zeros, at most `digits` decimals.
export function num(value, digits = 1) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value ?? "–");
  return String(Number(value.toFixed(digits)));
}

export function withUnit(value, u, digits = 1) {
  const shown = unit(u);
  return shown ? `${num(value, digits)} ${shown}` : num(value, digits);
}

// mm:ss (h:mm:ss past an hour); never negative.
export function clock(seconds) {
  const s = Math.max(0, Math.ceil(Number(seconds) || 0));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(r)}` : `${two(m)}:${two(r)}`;
}

export const MODALITY = {
  thermal: "Heat / cold", ultrasound: "Ultrasound", tens: "TENS",
};

// Parameter names in the clinician's words (the form falls back to the name itself).
export const PARAMETER = {
  temperature_c: "Pad temperature", intensity_w_cm2: "Intensity", frequency_mhz: "Frequency",
  duty_pct: "Duty cycle", frequency_hz: "Pulse frequency", pulse_width_us: "Pulse width",
  amplitude_ma: "Amplitude", channel: "Channel", waveform: "Waveform", mode: "Mode",
  electrode_area_cm2: "Electrode area",
};

export function parameterLabel(name) {
  if (PARAMETER[name]) return PARAMETER[name];
  const words = name.replace(/_(c|mhz|hz|us|ma|pct|w_cm2|cm2|s)$/, "").replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// The prescription in clinical words and units.
export function prescription(modality, s) {
  if (!s) return "";
  if (modality === "thermal" && s.temperature_c !== undefined) {
    return `${num(s.temperature_c)} °C`;
  }
  if (modality === "ultrasound") {
    return [s.frequency_mhz !== undefined && `${num(s.frequency_mhz)} MHz`,
      s.intensity_w_cm2 !== undefined && `${num(s.intensity_w_cm2, 2)} W/cm²`,
      s.duty_pct !== undefined && `${num(s.duty_pct)} %`].filter(Boolean).join(" · ");
  }
  if (modality === "tens") {
    return [s.amplitude_ma !== undefined && `${num(s.amplitude_ma)} mA`,
      s.frequency_hz !== undefined && `${num(s.frequency_hz)} Hz`,
      s.pulse_width_us !== undefined && `${num(s.pulse_width_us)} µs`,
      s.mode && s.mode !== "continuous" && s.mode,
      s.channel !== undefined && `channel ${s.channel}`].filter(Boolean).join(" · ");
  }
  return Object.entries(s).map(([k, v]) => `${parameterLabel(k)} ${v}`).join(" · ");
}

// The modality a plan step's settings are for (a step names only its profile).
export function guessModality(settings) {
  if (!settings) return "";
  if ("temperature_c" in settings) return "thermal";
  if ("intensity_w_cm2" in settings) return "ultrasound";
  if ("amplitude_ma" in settings) return "tens";
  return "";
}

// Settings as a plan or a booking stores them (text) with the numbers as numbers.
export function numbers(settings) {
  const out = {};
  for (const [k, v] of Object.entries(settings || {})) {
    out[k] = v !== "" && Number.isFinite(Number(v)) ? Number(v) : v;
  }
  return out;
}

// Live values per modality: [key, words, unit, decimals] (a boolean key: [key, words, yes, no]).
const LIVE = {
  thermal: [["temperature_c", "Pad temperature", "°C", 1], ["drive_pct", "Drive", "%", 0],
    ["pad_connected", "Pad", "connected", "NOT connected"]],
  ultrasound: [["power_w", "Measured power", "W", 1], ["contact_pct", "Contact", "%", 0],
    ["applicator_temp_c", "Applicator", "°C", 1]],
  tens: [["amplitude_ma", "Channel current", "mA", 1], ["impedance_ohm", "Impedance", "Ω", 0],
    ["channel_state", "Channel", null, null]],
};

const DOSE = {
  thermal: [["cem43_min", "Thermal dose", "CEM43 min", 3], ["max_pad_temp_c", "Hottest", "°C", 1]],
  ultrasound: [["energy_j", "Energy", "J", 0], ["hold_s", "Held (coupling lost)", "s", 0]],
  tens: [["stimulation_s", "Stimulation", "time", 0],
    ["max_charge_per_phase_uc", "Highest charge", "µC/phase", 1]],
};

function rows(table, values) {
  const out = [];
  for (const [key, words, a, b] of table) {
    const v = values?.[key];
    if (v === undefined || v === null) continue;
    if (typeof v === "boolean") out.push([words, v ? a : b]);
    else if (a === "time") out.push([words, clock(v)]);
    else if (typeof v === "number") out.push([words, a ? `${num(v, b)} ${a}` : num(v, b)]);
    else out.push([words, String(v)]);
  }
  return out;
}

// [[words, value with unit], ...] for a tile.
export function liveValues(modality, telemetry) {
  return rows(LIVE[modality] ?? [], telemetry);
}

export function doseValues(modality, dose) {
  return rows(DOSE[modality] ?? [], dose);
}

export function doseText(modality, dose) {
  return doseValues(modality, dose).map(([w, v]) => `${w} ${v}`).join(" · ");
}

// A service message with parameter names and units in the clinician's words.
export function clinicalWords(message) {
  let text = String(message ?? "").replace(/\bduration_s=([\d.]+)/g, "Duration $1 s");
  for (const [name, words] of Object.entries(PARAMETER)) {
    text = text.replaceAll(`${name}=`, `${words} `).replaceAll(`'${name}'`, words);
  }
  return text.replace(/(\d) ?(degC|W\/cm2|percent|us|cm2)\b/g, (m, d, u) => `${d} ${unit(u)}`);
}

export function timeOfDay(epochSeconds) {
  const when = epochSeconds ? new Date(epochSeconds * 1000) : new Date();
  return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// A small DOM helper: el("p", {class: "x", text: "..."}, child, ...).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}
