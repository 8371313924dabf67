// The login form: POST /api/login (the service sets the login cookie), then the page the
// user came for. The click that logs in also starts the audio, so that alarms can sound.
import { api, problem } from "./api.js";
import { AlarmSound } from "./sound.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const sound = new AlarmSound();
document.getElementById("login-expired").hidden =
  !new URLSearchParams(location.search).has("expired");

// Only a page of this service (never another site) after logging in.
function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  sound.unlock();
  error.textContent = "";
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  const { status, data } = await api("POST", "/api/login", {
    username: document.getElementById("username").value.trim(),
    password: document.getElementById("password").value,
  });
  button.disabled = false;
  if (status === 200) {
    location.assign(nextPage());
    return;
  }
  error.textContent = status === 0 ? "The clinic service does not answer." : problem(data);
  document.getElementById("password").value = "";
  document.getElementById("password").focus();
});
