// The admin's page: the accounts (GET /api/users), adding one, disabling one (an account
// is never deleted: the audit trail names it).
import { api, problem } from "./api.js";
import { el } from "./format.js";
import { startShell } from "./shell.js";

const shell = startShell();
shell.live.start();
const $ = (id) => document.getElementById(id);

function row(user) {
  const status = el("p", { class: "field-error", role: "status" });
  const disable = el("button", { type: "button", class: "danger", text: "Disable",
    "aria-label": `Disable ${user.name}` });
  const sure = el("button", { type: "button", class: "danger", text: `Yes, disable ${user.name}`, hidden: true });
  disable.hidden = user.disabled;
  disable.addEventListener("click", () => {
    sure.hidden = false;
    sure.focus();
  });
  sure.addEventListener("click", async () => {
    sure.disabled = true;
    const { status: code, data } = await api("POST", `/api/users/${encodeURIComponent(user.name)}/disable`);
    if (code === 200) load();
    else status.textContent = problem(data);
  });
  return el("tr", {}, el("th", { scope: "row", text: user.name }), el("td", { text: user.role }),
    el("td", { text: user.disabled ? "disabled" : "active" }),
    el("td", { text: String(user.created).slice(0, 16).replace("T", " ") }),
    el("td", {}, disable, sure, status));
}

async function load() {
  const { status, data } = await api("GET", "/api/users");
  const box = $("users");
  if (status !== 200) {
    box.replaceChildren(el("p", { class: "form-error", text: problem(data) }));
    return;
  }
  box.replaceChildren(el("table", { class: "list" }, el("caption", { text: "Accounts" }),
    el("thead", {}, el("tr", {}, ...["Name", "Role", "Status", "Added (UTC)", "Action"]
      .map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...data.users.map(row))));
}

$("user-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const out = $("user-error");
  out.textContent = "";
  const body = { name: $("user-name").value.trim(), role: $("user-role").value,
    password: $("user-password").value };
  const { status, data } = await api("POST", "/api/users", body);
  if (status === 201) {
    out.textContent = `${data.name} added as ${data.role}.`;
    form.reset();
    load();
  } else {
    out.textContent = problem(data);
  }
});

load();
