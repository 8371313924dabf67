// E-STOP ALL: the same red button at the same place on every page, F9 from anywhere (also
// inside a text field: F9 types nothing), no confirmation. It says "stopping…" until the
// service reports every output it stopped confirmed off; never "stopped" before that.
import { api, problem } from "./api.js";
import { timeOfDay } from "./format.js";
import { knownPlans } from "./plans.js";

export const ESTOP_KEY = "F9";

export function setupEstop(live) {
  const button = document.getElementById("estop");
  const status = document.getElementById("estop-status");
  if (!button || !status) return;
  let pending = new Map();     // session id -> device, not confirmed off yet
  let failed = [];

  function show(text, kind) {
    status.textContent = text;
    status.dataset.state = kind;
    button.dataset.state = kind;
  }

  function settle() {
    if (pending.size) {
      show(`stopping… ${[...pending.values()].join(", ")} not confirmed off yet`, "stopping");
    } else if (failed.length) {
      show(`NOT confirmed off: ${failed.join(", ")} — use the device's own stop`, "failed");
    } else {
      show(`Every output off (confirmed ${timeOfDay()})`, "done");
    }
  }

  async function press() {
    show("stopping…", "stopping");
    // A plan between two steps has no output to stop but would start its next step: end
    // the plans this browser started too.
    const room = api("POST", "/api/estop", undefined, { stay: true });
    const plans = knownPlans().map((id) => api("POST", `/api/plans/runs/${id}/estop`, undefined,
      { stay: true }));
    const { status: code, data } = await room;
    await Promise.allSettled(plans);
    if (code === 401) {
      show("E-STOP REFUSED: this login has ended. Use the device's own stop now, then log in " +
        "again.", "failed");
      return;
    }
    if (code !== 200) {
      show(`E-STOP request failed: ${problem(data)} — use the device's own stop`, "failed");
      return;
    }
    pending = new Map();
    failed = [];
    const rows = data.stopped || [];
    for (const row of rows) {
      if (row.stop_confirmed === false) failed.push(row.device);
      else if (row.stop_confirmed !== true) pending.set(row.id, row.device);
    }
    if (!rows.length) show(`No output was running (checked ${timeOfDay()})`, "done");
    else settle();
  }

  live.on("session", (data) => {
    if (!pending.has(data.id)) return;
    pending.delete(data.id);
    if (data.stop_confirmed === false) failed.push(data.device);
    settle();
  });
  button.addEventListener("click", press);
  document.addEventListener("keydown", (event) => {
    if (event.key === ESTOP_KEY && !event.repeat) {
      event.preventDefault();
      press();
    }
  }, true);
}
