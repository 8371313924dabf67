// The JSON API as the console calls it: the login cookie goes by itself, every request that
// changes something carries the CSRF header (docs/service.md), and a login that has ended
// (401) sends the page back to the login form; what runs on the devices keeps running.

export function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

export function toLogin(expired) {
  const next = location.pathname + location.search + location.hash;
  const why = expired ? "expired=1&" : "";
  location.assign(`/login?${why}next=${encodeURIComponent(next)}`);
}

// {status, data}: status 0 when the service could not be reached at all. A 401 goes to the
// login form unless `stay` (the e-stop must say on the page that it was refused).
export async function api(method, path, body, { stay = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = cookie("modctl_csrf");
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    return { status: 0, data: { error: "the clinic service does not answer", problems: [] } };
  }
  let data;
  try {
    data = await response.json();
  } catch (err) {
    data = { error: `the service answered ${response.status} without JSON`, problems: [] };
  }
  if (response.status === 401 && path !== "/api/login" && !stay) toLogin(true);
  return { status: response.status, data };
}

// The sentence of an error answer.
export function problem(data) {
  return (data && (data.error || (data.problems || []).join("; "))) || "refused";
}
