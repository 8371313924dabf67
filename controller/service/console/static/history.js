// A patient's history: their sessions and doses over time (GET /api/patients/ID/history),
// a chart of the time delivered per session, and each session's printable report.
import { api, problem } from "./api.js";
import { MODALITY, clock, doseText, el } from "./format.js";
import { startShell } from "./shell.js";

const shell = startShell();
shell.live.start();
const SVG = "http://www.w3.org/2000/svg";
// Chart geometry (SVG user units; the chart scales to the page's width).
const W = 720, H = 240, PAD = { left: 56, right: 16, top: 16, bottom: 40 };
// Shape and colour per modality: the shape tells them apart without colour.
const MARK = { thermal: ["circle", "#b3261e"], ultrasound: ["square", "#0b57d0"],
  tens: ["triangle", "#146c2e"] };

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function mark(kind, x, y) {
  const [shape, colour] = MARK[kind] || ["circle", "#444"];
  if (shape === "square") return svg("rect", { x: x - 6, y: y - 6, width: 12, height: 12, fill: colour });
  if (shape === "triangle") return svg("polygon", { points: `${x},${y - 7} ${x + 7},${y + 6} ${x - 7},${y + 6}`, fill: colour });
  return svg("circle", { cx: x, cy: y, r: 6, fill: colour });
}

function chart(sessions) {
  const points = sessions.map((s) => ({ t: new Date(s.started_at).getTime(), m: (s.delivered_s || 0) / 60, s }))
    .filter((p) => Number.isFinite(p.t)).sort((a, b) => a.t - b.t);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart",
    "aria-labelledby": "chart-title chart-desc" });
  root.append(svg("title", { id: "chart-title" }, "Minutes delivered per session"));
  root.append(svg("desc", { id: "chart-desc" }, `${points.length} sessions; the table below lists every one.`));
  if (!points.length) return root;
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 60000);
  const top = Math.max(1, ...points.map((p) => p.m));
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (m) => H - PAD.bottom - (m / top) * (H - PAD.top - PAD.bottom);
  root.append(svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" }));
  root.append(svg("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom, class: "axis" }));
  for (const m of [0, top / 2, top]) {
    root.append(svg("text", { x: PAD.left - 8, y: y(m) + 5, "text-anchor": "end", class: "tick" }, m.toFixed(1)));
  }
  root.append(svg("text", { x: 12, y: PAD.top + 4, class: "tick" }, "min"));
  for (const t of [t0, t1]) {
    root.append(svg("text", { x: x(t), y: H - 12, "text-anchor": t === t0 ? "start" : "end", class: "tick" },
      new Date(t).toLocaleDateString([], { month: "short", day: "numeric" })));
  }
  for (const p of points) root.append(mark(p.s.modality, x(p.t), y(p.m)));
  return root;
}

function legend() {
  return el("ul", { class: "legend" }, ...Object.entries(MARK).map(([kind, [shape]]) =>
    el("li", { "data-shape": shape, text: `${shape === "circle" ? "●" : shape === "square" ? "■" : "▲"} ${MODALITY[kind]}` })));
}

async function show(patient) {
  const box = document.getElementById("history");
  const { status, data } = await api("GET", `/api/patients/${encodeURIComponent(patient)}/history`);
  if (status !== 200) {
    box.replaceChildren(el("p", { class: "form-error", role: "alert", text: problem(data) }));
    return;
  }
  const sessions = data.sessions || [];
  if (!sessions.length) {
    box.replaceChildren(el("p", { text: `No sessions recorded for ${patient}.` }));
    return;
  }
  const totals = el("ul", { class: "totals" }, ...Object.entries(data.totals || {}).map(([kind, t]) =>
    el("li", { text: `${MODALITY[kind] || kind}: ${t.sessions} session${t.sessions === 1 ? "" : "s"}, ${clock(t.delivered_s)} delivered${doseText(kind, t.dose) ? ` · ${doseText(kind, t.dose)}` : ""}` })));
  const rows = sessions.map((s) => el("tr", {},
    el("td", { text: new Date(s.started_at).toLocaleString() }),
    el("td", { text: MODALITY[s.modality] || s.modality }),
    el("td", { text: `${s.outcome}${s.reason ? `: ${s.reason}` : ""}` }),
    el("td", { text: `${clock(s.delivered_s)} of ${clock(s.planned_s)}` }),
    el("td", { text: doseText(s.modality, s.dose) || "–" }),
    el("td", { text: s.operator }),
    el("td", {}, el("a", { href: `/api/sessions/${encodeURIComponent(s.session_id)}/report`,
      target: "_blank", rel: "noopener", text: "Printable report",
      "aria-label": `Printable report of the session of ${new Date(s.started_at).toLocaleString()}` }))));
  box.replaceChildren(
    el("h2", { text: `${data.session_count} sessions` }), totals,
    el("figure", { class: "chart-box" }, chart(sessions), legend()),
    el("table", { class: "list" }, el("caption", { text: `Sessions of ${patient}, newest first` }),
      el("thead", {}, el("tr", {}, ...["Started", "Modality", "Outcome", "Delivered", "Dose",
        "Operator", "Report"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...rows)));
}

const form = document.getElementById("patient-form");
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const id = form.patient.value.trim();
  if (id) location.assign(`/patients/${encodeURIComponent(id)}`);
});
const current = document.body.dataset.patient;
if (current) show(current);
