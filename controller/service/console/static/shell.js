// What every page after login has: the live stream, the alarm banner and its sound, the
// E-STOP ALL button, the lost-connection banner, logging out.
import { api } from "./api.js";
import { Alarms } from "./alarms.js";
import { setupEstop } from "./estop.js";
import { Live } from "./live.js";
import { finishPlan } from "./plans.js";
import { AlarmSound } from "./sound.js";

export const user = {
  name: document.body.dataset.user,
  role: document.body.dataset.role,
  may(role) {
    return this.role === role || this.role === "admin";
  },
};

function setupSound(sound) {
  const button = document.getElementById("sound-unlock");
  // Shown and hidden in place (its space kept): the sticky top never changes height, so a
  // click (a Stop, a Confirm) is never moved off its button by this prompt coming or going,
  // as happened when the press that unlocked the audio also hid the prompt mid-click.
  const show = () => {
    button.classList.toggle("quiet-off", sound.running());
  };
  sound.onBlocked = show;
  sound.onState = show;
  const unlock = () => sound.unlock().then(show);
  button.addEventListener("click", unlock);
  // Any click or key on the page is a gesture that may start the audio.
  for (const kind of ["pointerdown", "keydown"]) {
    document.addEventListener(kind, unlock, { capture: true });
  }
  sound.unlock().then(show);      // allowed when the login click came just before
  setTimeout(show, 300);
}

function setupLogout() {
  const button = document.getElementById("logout");
  button?.addEventListener("click", async () => {
    await api("POST", "/api/logout");
    location.assign("/login");
  });
}

// Keep what gets focus clear of the sticky top (e-stop, alarms), whatever its height.
function keepFocusInView() {
  const top = document.querySelector(".top");
  if (!top || !window.ResizeObserver) return;
  new ResizeObserver(() => {
    document.documentElement.style.scrollPaddingTop = `${top.offsetHeight + 8}px`;
  }).observe(top);
}

export function startShell() {
  const sound = new AlarmSound();
  const alarms = new Alarms(document.getElementById("alarms"), sound);
  const live = new Live(document.getElementById("connection"));
  live.on("hello", (data) => alarms.replace(data.alarms));
  live.on("alarm", (data) => alarms.raised(data));
  live.on("alarm_ack", (data) => alarms.acknowledged(data));
  live.on("plan", (data) => finishPlan(data.id));
  setupSound(sound);
  setupEstop(live);
  setupLogout();
  keepFocusInView();
  return { live, alarms, sound };
}
