// Plans in progress on the room view: their steps, the step running or the pause before the
// next, and a Stop for the plan (the API runs a plan straight through: no continue/skip).
import { api, problem } from "./api.js";
import { clock, el, guessModality, numbers, prescription } from "./format.js";
import { finishPlan, forgetPlan, knownPlans } from "./plans.js";

// While a plan runs, its summary is read again this often (the pause between steps has
// no event of its own).
const PLAN_REFRESH_MS = 2000;

export class PlanPanels {
  constructor(root, live) {
    this.root = root;
    this.catalogue = null;
    this.panels = new Map();
    live.on("hello", () => this.refresh());
    live.on("plan", (data) => {
      finishPlan(data.id);
      this.refresh();
    });
    live.on("session", () => this.refresh());
    setInterval(() => {
      if ([...this.panels.values()].some((p) => !p.final)) this.refresh();
    }, PLAN_REFRESH_MS);
  }

  async steps(name) {
    if (!this.catalogue) {
      const { status, data } = await api("GET", "/api/plans");
      this.catalogue = status === 200 ? data.plans : [];
    }
    const plan = this.catalogue.find((p) => p.title === name || p.name === name);
    return plan ? plan.steps : [];
  }

  async refresh() {
    const ids = knownPlans({ finished: true });
    const panels = new Map();
    for (const id of ids) {
      const { status, data } = await api("GET", `/api/plans/runs/${encodeURIComponent(id)}`);
      if (status === 404) {
        forgetPlan(id);
        continue;
      }
      if (status !== 200) continue;
      const key = JSON.stringify([data.final, data.progress, data.report?.outcome]);
      const old = this.panels.get(id);
      const node = old && old.key === key ? old.node : this.panel(data, await this.steps(data.plan));
      panels.set(id, { final: data.final, key, node });
    }
    this.panels = panels;
    this.root.replaceChildren(...[...panels.values()].map((p) => p.node));
    this.root.hidden = panels.size === 0;
  }

  panel(run, steps) {
    const lines = run.progress || [];
    let current = 0;
    let pausing = false;
    for (const line of lines) {
      const m = line.match(/^next: step (\d+) of/);
      if (m) {
        current = Number(m[1]);
        pausing = false;
      }
      if (line.trim().startsWith("pause of")) pausing = true;
    }
    const heading = `Plan ${run.plan}${run.patient ? ` · patient ${run.patient}` : ""}`;
    const id = `plan-${run.id}`;
    const list = el("ol", { class: "steps" }, ...steps.map((step) => {
      const here = !run.final && step.index === current;
      const words = `${step.name} on ${run.devices[step.role] || step.role}: ` +
        `${prescription(guessModality(step.settings), numbers(step.settings))} for ` +
        `${clock(step.duration_s)}` +
        (step.pause_after_s ? `, then a pause of ${clock(step.pause_after_s)}` : "");
      const item = el("li", { text: here ? `${words} — ${pausing ? "pause before the next step" : "running now"}` : words });
      if (here) item.setAttribute("aria-current", "step");
      return item;
    }));
    const state = run.final
      ? `Ended: ${run.report?.outcome ?? "done"} — ${run.report?.reason ?? ""}`
      : pausing ? "In the pause between steps" : `Step ${current || 1} of ${steps.length || "?"}`;
    const status = el("p", { class: "plan-status", role: "status" });
    const stop = el("button", {
      type: "button", class: "stop", text: "Stop plan", "aria-label": `Stop plan ${run.plan}`,
      onclick: async () => {
        stop.disabled = true;
        stop.textContent = "stopping…";
        const { status: code, data } = await api("POST", `/api/plans/runs/${run.id}/stop`);
        if (code !== 200) status.textContent = problem(data);
        this.refresh();
      },
    });
    stop.hidden = run.final;
    return el("section", { class: "plan", "aria-labelledby": id },
      el("h2", { id, text: heading }), el("p", { text: state }), list,
      el("p", { class: "plan-log", text: lines.slice(-1)[0] || "" }), status, stop);
  }
}
