// The admin dashboard page: polls /admin/api/overview and shows gateways, totals and rates,
// and the presence and devices of one user looked up by id.
//
// The admin key is kept in sessionStorage (this tab only, gone when the tab closes) and sent
// as "Authorization: Bearer KEY"; it never goes into a URL. Every value from the server is
// written with textContent, so user and gateway ids cannot inject markup.
"use strict";

(() => {
  const KEY_STORAGE = "tether-admin-key";
  const POLL_MS = 1000;
  // Points kept per sparkline: two minutes at one poll per second.
  const HISTORY = 120;
  // A report older than this many report intervals is shown as stale.
  const STALE_INTERVALS = 2.5;

  const $ = (id) => document.getElementById(id);
  const history = { connections: [], presence_transitions: [], deliveries: [] };
  let key = sessionStorage.getItem(KEY_STORAGE);
  let timer = null;
  // Counts sign-ins, so a request still in flight from an earlier sign-in schedules nothing.
  let generation = 0;
  let lookedUpUser = null;

  class Unauthorized extends Error {}

  async function request(path, body) {
    const options = { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" };
    if (body !== undefined) {
      options.method = "POST";
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const data = await response.json().catch(() => null);
    if (response.status === 401) {
      throw new Unauthorized(data?.error?.message ?? "the admin key was not accepted");
    }
    if (!response.ok) {
      const message = data?.error?.message ?? `HTTP ${response.status}`;
      throw new Error(message);
    }
    return data;
  }

  // Formatting.

  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

  function rate(value) {
    return value >= 100 ? integer.format(value) : decimal.format(value);
  }

  function duration(seconds) {
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
    return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
  }

  function mebibytes(bytes) {
    return bytes ? `${decimal.format(bytes / 1048576)} MiB` : "–";
  }

  function lastSeen(presence, nowMs) {
    if (presence.status !== "offline") return "";
    if (!presence.last_seen_ms) return "not seen yet";
    return `last seen ${duration(Math.max(0, nowMs - presence.last_seen_ms) / 1000)} ago`;
  }

  // Rendering.

  function cell(row, text, numeric = false) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "number";
    row.append(td);
    return td;
  }

  function sparkline(container, points) {
    const svgNs = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNs, "svg");
    svg.setAttribute("viewBox", `0 0 ${HISTORY - 1} 100`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    // Until the history is full, the points spread over the whole width.
    const top = Math.max(...points, 1);
    const step = (HISTORY - 1) / Math.max(points.length - 1, 1);
    const coordinates = points.map((value, index) => `${index * step},${98 - (value / top) * 96}`);
    if (points.length === 1) coordinates.push(`${HISTORY - 1},${98 - (points[0] / top) * 96}`);
    const line = document.createElementNS(svgNs, "polyline");
    line.setAttribute("points", coordinates.join(" "));
    svg.append(line);
    container.replaceChildren(svg);
  }

  function remember(name, value) {
    const points = history[name];
    points.push(value);
    if (points.length > HISTORY) points.shift();
    sparkline($(`spark-${name}`), points);
  }

  function renderOverview(overview) {
    const { totals, rates, counters } = overview;
    $("mode").textContent = overview.mode;
    $("served-by").textContent = overview.served_by_gateway ?? "a logic worker";
    $("updated").textContent = new Date(overview.time_ms).toLocaleTimeString("en-GB");
    $("where").hidden = false;

    for (const name of ["gateways", "connections", "sessions", "users"]) {
      $(`total-${name}`).textContent = integer.format(totals[name]);
    }
    for (const name of ["presence_transitions", "deliveries", "messages"]) {
      $(`rate-${name}`).textContent = rate(rates[name]);
    }
    $("counter-slow_consumer_disconnects").textContent = integer.format(
      counters.slow_consumer_disconnects,
    );
    $("rate-slow_consumer_disconnects").textContent =
      `closed since start; ${rate(rates.slow_consumer_disconnects)}/s now`;
    remember("connections", totals.connections);
    remember("presence_transitions", rates.presence_transitions);
    remember("deliveries", rates.deliveries);

    const rows = overview.gateways.map((load) => {
      const row = document.createElement("tr");
      row.dataset.gateway = load.gateway_id;
      const age = Math.max(0, overview.time_ms - load.sampled_at_ms) / 1000;
      const stale = load.interval_s > 0 && age > STALE_INTERVALS * load.interval_s;
      row.dataset.stale = String(stale);
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = load.gateway_id;
      row.append(th);
      cell(row, duration(Math.max(0, load.sampled_at_ms - load.started_at_ms) / 1000));
      cell(row, integer.format(load.connections), true).dataset.field = "connections";
      cell(row, integer.format(load.sessions), true).dataset.field = "sessions";
      cell(row, integer.format(load.users), true).dataset.field = "users";
      cell(row, rate(load.rates.presence_transitions), true);
      cell(row, rate(load.rates.deliveries), true);
      cell(row, rate(load.rates.messages), true);
      cell(row, integer.format(load.totals.slow_consumer_disconnects), true);
      cell(row, `${decimal.format(load.loop_lag_ms)} ms`, true);
      cell(row, `${integer.format(load.cpu_percent)} %`, true);
      cell(row, mebibytes(load.resident_bytes), true);
      cell(row, `${decimal.format(age)} s`, true);
      return row;
    });
    $("gateways").tBodies[0].replaceChildren(...rows);
    $("gateways-note").textContent = overview.truncated
      ? `Showing the first ${overview.gateways.length} gateways by id; there are more.`
      : "";
  }

  function renderUser(sessions, nowMs) {
    $("user-name").textContent = sessions.user_id;
    const status = $("user-status");
    status.textContent = sessions.status;
    status.dataset.status = sessions.status;
    $("user-seen").textContent = lastSeen(sessions, nowMs);
    const rows = sessions.devices.map((device) => {
      const row = document.createElement("tr");
      row.className = "device";
      row.dataset.device = device.device_id;
      cell(row, device.device_id);
      cell(row, device.gateway_id);
      cell(row, device.connection_id);
      cell(row, device.activity);
      return row;
    });
    if (rows.length === 0) {
      const row = document.createElement("tr");
      row.className = "empty";
      cell(row, "No device connected").colSpan = 4;
      rows.push(row);
    }
    $("devices").tBodies[0].replaceChildren(...rows);
    $("user").hidden = false;
  }

  // Polling and signing in and out.

  async function refreshUser(nowMs) {
    if (lookedUpUser === null) return;
    const user = lookedUpUser;
    try {
      const sessions = await request("/admin/api/sessions", { user_id: user });
      if (user === lookedUpUser) {
        renderUser(sessions, nowMs);
        $("user-error").textContent = "";
      }
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      $("user-error").textContent = `Could not look up ${user}: ${error.message}`;
    }
  }

  async function poll(ownGeneration) {
    timer = null;
    try {
      const overview = await request("/admin/api/overview");
      renderOverview(overview);
      $("banner").textContent = "";
      await refreshUser(overview.time_ms);
    } catch (error) {
      if (ownGeneration !== generation) return;
      if (error instanceof Unauthorized) {
        signOut(`Signed out: ${error.message}.`);
        return;
      }
      $("banner").textContent = `Update failed, retrying: ${error.message}`;
    }
    if (ownGeneration === generation) timer = setTimeout(poll, POLL_MS, ownGeneration);
  }

  function showDashboard() {
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
    generation += 1;
    poll(generation);
  }

  function signOut(message = "") {
    key = null;
    generation += 1;
    sessionStorage.removeItem(KEY_STORAGE);
    if (timer !== null) clearTimeout(timer);
    timer = null;
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("where").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    $("admin-key").value = "";
    $("admin-key").focus();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    key = $("admin-key").value.trim();
    $("admin-key").value = "";
    sessionStorage.setItem(KEY_STORAGE, key);
    $("login-error").textContent = "";
    showDashboard();
  });

  $("sign-out").addEventListener("click", () => signOut());

  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    lookedUpUser = $("user-id").value.trim();
    $("user").hidden = true;
    refreshUser(Date.now()).catch((error) => signOut(`Signed out: ${error.message}.`));
  });

  if (key) {
    showDashboard();
  } else {
    $("admin-key").focus();
  }
})();
