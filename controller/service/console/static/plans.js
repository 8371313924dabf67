// The plan runs this browser started (the API has no list of running plans): kept in
// localStorage so that the room view shows them and E-STOP ALL ends them between steps.
const KEY = "modctl.plans";
// A finished plan stays listed this long, so that its outcome can be read.
const KEEP_FINISHED_MS = 10 * 60 * 1000;

function load() {
  try {
    return JSON.parse(localStorage.getItem(KEY) || "[]");
  } catch (err) {
    return [];
  }
}

function save(list) {
  localStorage.setItem(KEY, JSON.stringify(list));
}

export function rememberPlan(id) {
  save([...load().filter((p) => p.id !== id), { id, finished: null }]);
}

export function finishPlan(id) {
  save(load().map((p) => (p.id === id && !p.finished ? { ...p, finished: Date.now() } : p)));
}

export function forgetPlan(id) {
  save(load().filter((p) => p.id !== id));
}

// Plans still running (or just finished) that this browser started.
export function knownPlans({ finished = false } = {}) {
  const now = Date.now();
  const kept = load().filter((p) => !p.finished || now - p.finished < KEEP_FINISHED_MS);
  save(kept);
  return kept.filter((p) => finished || !p.finished).map((p) => p.id);
}
