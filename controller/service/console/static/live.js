// The live stream (GET /api/events, Server-Sent Events). A lost connection shows at once,
// full-width: the page is then not live, while what runs on the devices keeps running
// (the service and the devices own the stops). The page reconnects by itself, and every
// reconnection starts with `hello`, the whole room, so nothing missed stays wrong.
import { api } from "./api.js";

// Wait before reconnecting after the stream broke (a restarting service takes a few s).
const RETRY_MS = 1000;
const KINDS = ["hello", "device", "telemetry", "session", "plan", "alarm", "alarm_ack",
  "dropped", "closing"];

export class Live {
  constructor(banner) {
    this.banner = banner;
    this.handlers = new Map();
    this.source = null;
    this.timer = null;
    this.leaving = false;
    this.connected = false;
    window.addEventListener("pagehide", () => {
      this.leaving = true;
      if (this.source) this.source.close();
    });
  }

  on(kind, fn) {
    if (!this.handlers.has(kind)) this.handlers.set(kind, []);
    this.handlers.get(kind).push(fn);
  }

  emit(kind, data) {
    for (const fn of this.handlers.get(kind) || []) {
      try {
        fn(data);
      } catch (err) {
        console.error(`live ${kind}:`, err);
      }
    }
  }

  start() {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    const source = new EventSource("/api/events");
    this.source = source;
    for (const kind of KINDS) {
      source.addEventListener(kind, (event) => this.message(kind, event));
    }
    source.addEventListener("error", () => {
      if (source === this.source) this.lost("The connection to the clinic service is lost.");
    });
  }

  message(kind, event) {
    let data = {};
    try {
      data = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    if (kind === "hello") {
      this.connected = true;
      this.banner.hidden = true;
      document.body.classList.remove("offline");
    } else if (kind === "dropped") {
      this.start();               // this page fell behind: read the whole room again
      return;
    } else if (kind === "closing") {
      this.lost("The clinic service is shutting down (it stops every output as it goes).");
      return;
    }
    this.emit(kind, data);
  }

  lost(why) {
    if (this.leaving) return;
    if (this.source) this.source.close();
    this.source = null;
    this.connected = false;
    this.banner.querySelector(".why").textContent = why;
    this.banner.hidden = false;
    document.body.classList.add("offline");
    this.emit("lost", {});
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.retry(), RETRY_MS);
  }

  async retry() {
    const { status } = await api("GET", "/api/me");   // 401 goes to the login page
    if (status === 200) this.start();
    else if (status !== 401) this.timer = setTimeout(() => this.retry(), RETRY_MS);
  }
}
