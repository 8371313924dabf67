// The alarm banner: every open alarm of the service (GET /api/alarms, `alarm` and
// `alarm_ack` events), highest priority first, marker and words as well as colour, until a
// person acknowledges it (POST /api/alarms/ID/ack, audited by the service).
import { api, problem } from "./api.js";
import { el, timeOfDay } from "./format.js";

// How often an alarm signal repeats while its alarm is open (high: IEC 60601-1-8 allows
// 2.5-15 s; medium: up to 30 s).
const REPEAT_S = { high: 6, medium: 25 };
const WORDS = { high: "HIGH PRIORITY", medium: "MEDIUM PRIORITY", low: "LOW PRIORITY" };
const RANK = { high: 0, medium: 1, low: 2 };

export class Alarms {
  constructor(root, sound) {
    this.root = root;
    this.sound = sound;
    this.open = new Map();       // id -> alarm
    this.heard = new Set();      // ids already sounded on this page
    this.lastPlayed = { high: 0, medium: 0 };
    this.listeners = [];
    setInterval(() => this.repeat(), 1000);
  }

  onChange(fn) {
    this.listeners.push(fn);
  }

  // The whole list (hello, a re-read): alarms not in it were acknowledged meanwhile.
  replace(alarms) {
    this.open = new Map((alarms || []).map((a) => [a.id, a]));
    this.changed();
  }

  raised(alarm) {
    this.open.set(alarm.id, alarm);
    this.changed();
  }

  acknowledged(alarm) {
    this.open.delete(alarm.id);
    this.changed();
  }

  sorted() {
    return [...this.open.values()].sort((a, b) => RANK[a.priority] - RANK[b.priority] ||
      a.id - b.id);
  }

  forDevice(name) {
    return this.sorted().find((a) => a.device === name) || null;
  }

  changed() {
    const fresh = this.sorted().filter((a) => !this.heard.has(a.id));
    for (const a of fresh) this.heard.add(a.id);
    if (fresh.length) {
      const top = fresh[0].priority;
      if (this.sound.play(top) && top in this.lastPlayed) {
        this.lastPlayed[top] = performance.now();
      }
    }
    this.render();
    for (const fn of this.listeners) fn();
  }

  repeat() {
    const open = new Set([...this.open.values()].map((a) => a.priority));
    const priority = open.has("high") ? "high" : open.has("medium") ? "medium" : null;
    if (!priority) return;
    if (performance.now() - this.lastPlayed[priority] >= REPEAT_S[priority] * 1000) {
      if (this.sound.play(priority)) this.lastPlayed[priority] = performance.now();
    }
  }

  render() {
    const items = this.sorted().map((alarm) => this.item(alarm));
    this.root.replaceChildren(...items);
    this.root.hidden = items.length === 0;
  }

  item(alarm) {
    const who = [alarm.device, alarm.patient && `patient ${alarm.patient}`]
      .filter(Boolean).join(" · ");
    const status = el("span", { class: "alarm-status" });
    const ack = el("button", {
      class: "ack", type: "button", text: "Acknowledge",
      "aria-label": `Acknowledge alarm on ${alarm.device}: ${alarm.reason}`,
      onclick: async () => {
        ack.disabled = true;
        status.textContent = "acknowledging…";
        const { status: code, data } = await api("POST", `/api/alarms/${alarm.id}/ack`);
        if (code === 200 || code === 404) {
          this.acknowledged(alarm);
        } else {
          ack.disabled = false;
          status.textContent = problem(data);
        }
      },
    });
    return el("div", { class: `alarm alarm-${alarm.priority}`, role: "group",
      "aria-label": `${WORDS[alarm.priority]} alarm` },
    el("span", { class: "alarm-marker", text: alarm.marker }),
    el("span", { class: "alarm-words" },
      el("strong", { text: `${WORDS[alarm.priority]} · ${who}` }),
      el("span", { text: ` — ${alarm.reason} ` }),
      el("span", { class: "alarm-time", text: `(since ${timeOfDay(alarm.raised_at)})` })),
    status, ack);
  }
}
