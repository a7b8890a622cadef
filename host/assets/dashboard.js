// The page of `guardian dashboard`. It talks only to the dashboard process that
// served it (the /api/ routes), which fetches from the share servers and
// combines their shares; this script only draws. Every DOM text is set with
// textContent, never as HTML, since names and messages come from the servers.
"use strict";

const REFRESH_MS = 2000;
const cards = new Map(); // endpoint name -> {root, chart}
let timer = null;

class ApiError extends Error {
  constructor(problem) {
    super(problem.message);
    this.problem = problem;
  }
}

// The dashboard acts only on changes that carry this token (written into the
// page by the process that served it) as JSON, from this page's own origin.
const TOKEN = document.querySelector('meta[name="guardian-dashboard-token"]').content;

async function api(method, path) {
  const request = { method, cache: "no-store" };
  if (method !== "GET") {
    request.headers = { "Content-Type": "application/json", "X-Dashboard-Token": TOKEN };
    request.body = "{}";
  }
  let response;
  try {
    response = await fetch(path, request);
  } catch (e) {
    throw new ApiError({ code: "dashboard_down", message: "The dashboard process does not answer (was it stopped?): " + e });
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(body && body.error ? body.error : { code: "http_" + response.status, message: "The dashboard answered " + response.status });
  }
  return body;
}

function text(root, selector, value) {
  root.querySelector(selector).textContent = value;
}

function perServer(values) {
  const known = values.filter((v) => v !== null);
  if (known.length === 0) return "?";
  if (known.length === values.length && known.every((v) => v === known[0])) return String(known[0]);
  return values.map((v) => (v === null ? "?" : String(v))).join(" / ") + " (per server)";
}

function formatValue(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toPrecision(6).replace(/\.?0+$/, "");
  return typeof value === "string" ? value : JSON.stringify(value);
}

function card(name) {
  let entry = cards.get(name);
  if (entry) return entry;
  const root = document.getElementById("card").content.firstElementChild.cloneNode(true);
  root.dataset.endpoint = name;
  text(root, ".name", name);
  root.querySelector(".seal").addEventListener("click", () => seal(name));
  entry = { root, chart: null };
  cards.set(name, entry);
  return entry;
}

function showProblems(problems) {
  const box = document.getElementById("problems");
  box.replaceChildren(
    ...problems.map((p) => {
      const line = document.createElement("p");
      line.dataset.code = p.code;
      line.textContent = p.message;
      return line;
    })
  );
}

function renderOverview(overview) {
  text(document, "#servers", "Servers: " + overview.servers.join(", ") + ".");
  showProblems(overview.errors);
  const main = document.getElementById("endpoints");
  if (overview.endpoints.length === 0 && overview.errors.length > 0 && cards.size > 0) {
    // No server could list: keep the cards, each saying why it has no chart.
    for (const entry of cards.values()) renderError(entry, overview.errors[0]);
    return;
  }
  const names = new Set(overview.endpoints.map((e) => e.name));
  for (const name of [...cards.keys()]) {
    if (!names.has(name)) {
      const gone = cards.get(name);
      if (gone.chart) gone.chart.destroy();
      gone.root.remove();
      cards.delete(name);
    }
  }
  if (overview.endpoints.length === 0) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = overview.errors.length ? "No endpoints could be listed." : "No endpoints yet: `guardian endpoint create` makes one.";
    main.replaceChildren(empty);
    return;
  }
  main.querySelectorAll(".empty").forEach((e) => e.remove());
  for (const endpoint of overview.endpoints) {
    const { root } = card(endpoint.name);
    if (!root.isConnected) main.appendChild(root);
    text(root, ".plugin", endpoint.plugin);
    text(root, ".min-batch", endpoint.min_batch);
    const waiting = perServer(endpoint.waiting);
    text(root, ".waiting", waiting);
    root.dataset.waiting = endpoint.waiting.map((v) => (v === null ? "?" : v)).join("/");
    const known = endpoint.waiting.filter((v) => v !== null);
    const agreedAtMost = known.length ? Math.min(...known) : 0;
    text(
      root,
      ".hint",
      agreedAtMost < endpoint.min_batch
        ? `A batch needs at least ${endpoint.min_batch} reports held by every server; ${agreedAtMost} waiting.`
        : ""
    );
  }
}

function renderTotal(entry, total) {
  const { root } = entry;
  root.dataset.state = "ok";
  root.dataset.count = total.count;
  root.dataset.batches = total.batches;
  root.dataset.chart = total.chart.kind;
  text(root, ".error", "");
  root.querySelector(".error").removeAttribute("data-code");
  text(root, ".count", total.count);
  // Robust endpoints: reports whose validity proofs failed, in no batch.
  root.dataset.rejected = total.rejected || 0;
  text(root, ".rejected", total.rejected || 0);
  text(root, ".batches", total.batches);
  const rows =
    total.chart.kind === "bars"
      ? total.chart.labels.map((label, i) => [label, total.chart.values[i]])
      : total.chart.items;
  root.querySelector(".data tbody").replaceChildren(
    ...rows.map(([label, value]) => {
      const tr = document.createElement("tr");
      tr.dataset.label = label;
      tr.dataset.value = value === null ? "" : String(value);
      const th = document.createElement("th");
      th.textContent = label;
      const td = document.createElement("td");
      td.textContent = formatValue(value);
      tr.append(th, td);
      return tr;
    })
  );
  if (total.chart.kind !== "bars") {
    if (entry.chart) {
      entry.chart.destroy();
      entry.chart = null;
    }
    return;
  }
  if (!entry.chart) {
    entry.chart = new Chart(root.querySelector("canvas"), {
      type: "bar",
      data: { labels: [], datasets: [{ label: total.chart.series, data: [], backgroundColor: "#2f6fde" }] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        plugins: { legend: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
      },
    });
  }
  entry.chart.data.labels = total.chart.labels;
  entry.chart.data.datasets[0].label = total.chart.series;
  entry.chart.data.datasets[0].data = total.chart.values;
  entry.chart.update();
}

function renderError(entry, problem) {
  const { root } = entry;
  root.dataset.state = "error";
  const box = root.querySelector(".error");
  box.dataset.code = problem.code;
  box.textContent = "No chart: " + problem.message;
}

async function refreshTotal(name) {
  const entry = card(name);
  try {
    renderTotal(entry, await api("GET", `/api/endpoints/${encodeURIComponent(name)}/total`));
  } catch (e) {
    renderError(entry, e.problem || { code: "error", message: String(e) });
  }
}

async function refresh() {
  clearTimeout(timer);
  try {
    const overview = await api("GET", "/api/endpoints");
    renderOverview(overview);
    await Promise.all(overview.endpoints.map((e) => refreshTotal(e.name)));
    text(document, "#updated", "Updated " + new Date().toLocaleTimeString() + ".");
  } catch (e) {
    showProblems([e.problem || { code: "error", message: String(e) }]);
  } finally {
    // A seal refreshes at once; whichever refresh ends last schedules the next.
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }
}

async function seal(name) {
  const { root } = card(name);
  const button = root.querySelector(".seal");
  const status = root.querySelector(".seal-status");
  button.disabled = true;
  status.removeAttribute("data-code");
  status.textContent = "Sealing…";
  try {
    const sealed = await api("POST", `/api/endpoints/${encodeURIComponent(name)}/seal`);
    status.dataset.batch = sealed.batch_id;
    const rejected = sealed.rejected ? ` (${sealed.rejected} rejected: their proofs failed)` : "";
    status.textContent = `Sealed batch ${sealed.batch_id.slice(0, 12)}… of ${sealed.count} report${sealed.count === 1 ? "" : "s"}${rejected}.`;
  } catch (e) {
    const problem = e.problem || { code: "error", message: String(e) };
    status.dataset.code = problem.code;
    status.textContent = problem.message;
  } finally {
    button.disabled = false;
  }
  await refresh();
}

refresh();
