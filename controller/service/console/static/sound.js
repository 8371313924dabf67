// Alarm sounds through the Web Audio API, in the pattern of IEC 60601-1-8:
// high: two bursts of five short tones, repeated until acknowledged; medium: three tones
// (repeated slowly until acknowledged); low: one tone.
// Browsers keep audio off until the page has had a user gesture: the login click unlocks it
// (Chromium carries that gesture over to the pages that follow on this site), and any click
// or key on a page unlocks it too. While it is off, the page says so (`onBlocked`).
// `window.modctlSound` counts the bursts that were really played, for tests and support.

const TONE_S = 0.12;           // one pulse
const PULSE_GAP_S = 0.08;      // between pulses of a burst
const BURST_GAP_S = 0.5;       // between the two bursts of a high-priority alarm
const PITCH = { high: 880, medium: 660, low: 523 };
const VOLUME = 0.3;
// A burst: offsets of its pulses (the five of high follow the IEC rhythm "x x x - x x").
const PULSES = {
  high: [0, 1, 2, 3.5, 4.5],
  medium: [0, 1, 2],
  low: [0],
};

export class AlarmSound {
  constructor() {
    this.ctx = null;
    this.onBlocked = () => {};
    this.onState = () => {};
    this.hook = { played: 0, blocked: 0, last: null, state: "none",
      bursts: { high: 0, medium: 0, low: 0 } };
    window.modctlSound = this.hook;
  }

  context() {
    if (this.ctx) return this.ctx;
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) {
      this.hook.state = "unavailable";
      return null;
    }
    this.ctx = new Context();
    this.hook.state = this.ctx.state;
    this.ctx.addEventListener("statechange", () => {
      this.hook.state = this.ctx.state;
      this.onState(this.ctx.state);
    });
    return this.ctx;
  }

  running() {
    const ctx = this.context();
    return Boolean(ctx && ctx.state === "running");
  }

  // Called from a user gesture (or at page start, which succeeds after a gesture on the
  // page before): start the audio context.
  unlock() {
    const ctx = this.context();
    if (!ctx || ctx.state === "running") return Promise.resolve();
    return ctx.resume().catch(() => {});
  }

  tone(start, pitch) {
    const ctx = this.ctx;
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "square";
    osc.frequency.value = pitch;
    gain.gain.setValueAtTime(0, start);
    gain.gain.linearRampToValueAtTime(VOLUME, start + 0.01);
    gain.gain.setValueAtTime(VOLUME, start + TONE_S - 0.02);
    gain.gain.linearRampToValueAtTime(0, start + TONE_S);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start);
    osc.stop(start + TONE_S + 0.01);
  }

  burst(priority, start) {
    for (const step of PULSES[priority]) {
      this.tone(start + step * (TONE_S + PULSE_GAP_S), PITCH[priority]);
    }
    this.hook.played += 1;
    this.hook.bursts[priority] += 1;
    this.hook.last = priority;
    const pulses = PULSES[priority];
    return start + (pulses[pulses.length - 1] + 1) * (TONE_S + PULSE_GAP_S);
  }

  // One alarm signal of a priority: high is two bursts, the others one.
  play(priority) {
    const ctx = this.context();
    if (!ctx) return false;
    if (ctx.state !== "running") {
      this.hook.blocked += 1;
      this.onBlocked();
      return false;
    }
    const end = this.burst(priority, ctx.currentTime + 0.02);
    if (priority === "high") this.burst("high", end + BURST_GAP_S);
    return true;
  }
}
