"use strict";
const $ = (id) => document.getElementById(id);
const CHART_BARS = 12;
// The API token lives in this tab's sessionStorage, never in a cookie: a request another site's page
// makes to the gateway carries nothing of it, so there is no cross-site request forgery to guard against.
const TOKEN_KEY = "hotrepos.token";
const RECONNECT_MS = 3000;
// The report being followed: aborting it ends its progress stream.
let following = null;
// While a report waits for GitHub's budget, its estimate counts down between updates.
let waitTimer = null;

function percentOf(step) {
  switch (step.state) {
    case "requested": return 5;
    case "fetching": return 10 + Math.round(75 * step.pages_fetched / step.pages);
    case "aggregated": return 90;
    default: return 100;
  }
}

function describe(step) {
  if (step.queue && (step.state === "requested" || step.state === "fetching")) return waitingFor(step.queue);
  switch (step.state) {
    case "requested": return "Queued…";
    case "fetching": return `Fetching from GitHub: page ${step.pages_fetched} of ${step.pages}`;
    case "aggregated": return "Grouping by language, writing the CSV…";
    case "exported": return `Done: ${step.repositories} repositories, ${step.rows} rows.` + partialNote(step.incomplete_pages);
    case "failed": return `Failed at ${step.stage}: ${step.reason}`;
    default: return step.state;
  }
}

function waitingFor(queue) {
  const elapsed = (Date.now() - Date.parse(queue.at)) / 1000;
  const left = Math.max(0, Math.round(queue.eta_seconds - Math.max(0, elapsed)));
  return `Waiting for GitHub: ${queue.position} ahead, about ${left} s`;
}

function partialNote(pages) {
  return pages && pages.length ? ` Partial: GitHub answered pages ${pages.join(", ")} only in part, even after retries.` : "";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class SignedOut extends Error {}

// Every API call carries the token, when there is one (a gateway with GATEWAY_AUTH=none needs none).
async function api(url, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { ...options, headers });
  if (response.status === 401) {
    signOut(token ? "The gateway no longer accepts this token: sign in again." : "");
    throw new SignedOut();
  }
  return response;
}

function showSignedIn(signedIn) {
  $("login").hidden = $("login-help").hidden = signedIn;
  for (const id of ["order", "history-title", "history-table"]) $(id).hidden = !signedIn;
  $("session").hidden = !(signedIn && sessionStorage.getItem(TOKEN_KEY));
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (following) following.abort();
  $("progress-box").hidden = true;
  showSignedIn(false);
  showError(message || "");
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  showError("");
  if (!(await loadHistory())) showError("The gateway does not accept this token.");
}

async function generate(event) {
  event.preventDefault();
  showError("");
  const body = { period: $("period").value, layout: $("layout").value };
  if ($("notify").value.trim()) body.notify = $("notify").value.trim();
  $("generate").disabled = true;
  try {
    const response = await api("/api/reports", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID() },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (response.status === 422) {
      showError(answer.detail.map((e) => `${e.loc[e.loc.length - 1]}: ${e.msg}`).join("; "));
    } else if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      showError(`${answer.detail}${retry ? ` (retry in ${retry} s)` : ""}`);
    } else {
      follow(answer);
      loadHistory();
    }
  } catch (error) {
    if (!(error instanceof SignedOut)) showError(`The gateway did not answer: ${error}`);
  } finally {
    $("generate").disabled = false;
  }
}

function follow(report) {
  if (following) following.abort();
  following = new AbortController();
  clearInterval(waitTimer);
  $("progress-box").hidden = false;
  $("result").hidden = true;
  $("progress").value = 0;
  $("progress").classList.remove("error");
  $("state").className = "";
  $("state").textContent = "Queued…";
  streamProgress(report.events_url, following.signal, (step) => {
    $("progress").value = percentOf(step);
    $("state").textContent = describe(step);
    clearInterval(waitTimer);
    if (step.queue) waitTimer = setInterval(() => { $("state").textContent = describe(step); }, 1000);
    if (step.state === "exported" || step.state === "failed") {
      if (step.state === "failed") $("state").className = "error";
      else showResult(report.status_url);
      loadHistory();
      return true;
    }
    return false;
  });
}

// The progress stream over fetch, not EventSource, which cannot send the Authorization header: the
// token stays in a header, as on every other call. Like EventSource, it resumes after a dropped
// connection from the last event seen (Last-Event-ID); a 204 says there is nothing more to wait for.
async function streamProgress(url, signal, onStep) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const response = await api(url, { headers: lastId ? { "Last-Event-ID": lastId } : {}, signal });
      if (response.status === 204) return;
      if (!response.ok) {
        showError(`The progress stream answered ${response.status}.`);
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = parseFrame(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (frame.id) lastId = frame.id;
          if (frame.event === "progress" && frame.data && onStep(JSON.parse(frame.data))) {
            reader.cancel();
            return;
          }
        }
      }
    } catch (error) {
      if (signal.aborted || error instanceof SignedOut) return;
    }
    await sleep(RECONNECT_MS);
  }
}

function parseFrame(text) {
  const frame = { data: "" };
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "data") frame.data += value;
    else frame[name] = value;
  }
  return frame;
}

async function showResult(statusUrl) {
  let status;
  try {
    status = await (await api(statusUrl)).json();
  } catch (error) {
    if (!(error instanceof SignedOut)) showError(`The gateway did not answer: ${error}`);
    return;
  }
  $("download").href = status.download_url;
  drawChart(status.languages);
  $("result").hidden = false;
}

function svg(name, attributes, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(languages) {
  const chart = $("chart");
  chart.replaceChildren();
  const top = [...languages].sort((a, b) => b.count - a.count).slice(0, CHART_BARS);
  const max = Math.max(1, ...top.map((l) => l.count));
  const row = 22, labelWidth = 130, barSpace = 560;
  chart.setAttribute("viewBox", `0 0 ${labelWidth + barSpace + 50} ${row * top.length}`);
  chart.setAttribute("height", row * top.length);
  top.forEach((language, index) => {
    const y = index * row;
    const width = Math.max(2, Math.round(barSpace * language.count / max));
    chart.append(
      svg("text", { x: labelWidth - 8, y: y + 15, "text-anchor": "end" }, language.language),
      svg("rect", { x: labelWidth, y: y + 4, width, height: row - 8, rx: 3 }),
      svg("text", { x: labelWidth + width + 6, y: y + 15 }, String(language.count)),
    );
  });
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function failedCell(failure) {
  const td = cell(`failed at ${failure.stage}`, "failed");
  td.title = failure.reason;
  return td;
}

// A plain link cannot carry the token: the file is fetched with it and handed to the browser to save.
async function download(event) {
  const link = event.target.closest("a[data-download]");
  if (!link) return;
  event.preventDefault();
  try {
    const response = await api(link.href);
    if (!response.ok) {
      showError(`The download answered ${response.status}.`);
      return;
    }
    const disposition = response.headers.get("Content-Disposition") || "";
    const name = /filename="?([^";]+)"?/.exec(disposition);
    const saved = document.createElement("a");
    saved.href = URL.createObjectURL(await response.blob());
    saved.download = name ? name[1] : "hotrepos.csv";
    document.body.append(saved);
    saved.click();
    saved.remove();
    setTimeout(() => URL.revokeObjectURL(saved.href), 60_000);
  } catch (error) {
    if (!(error instanceof SignedOut)) showError(`The download failed: ${error}`);
  }
}

// True once the history shows, that is once the gateway knows who is asking.
async function loadHistory() {
  let response;
  try {
    response = await api("/api/reports?limit=20");
  } catch (error) {
    if (!(error instanceof SignedOut)) showError(`The gateway did not answer: ${error}`);
    return false;
  }
  showSignedIn(true);
  if (!response.ok) return true;
  const page = await response.json();
  $("history").replaceChildren(...page.items.map((report) => {
    const tr = document.createElement("tr");
    const link = cell("");
    if (report.download_url) {
      const a = document.createElement("a");
      a.href = report.download_url;
      a.dataset.download = "";
      a.textContent = "CSV";
      link.append(a);
    }
    tr.append(
      cell(new Date(report.requested_at).toLocaleString()),
      cell(report.period),
      cell(report.since),
      report.failure ? failedCell(report.failure) : cell(report.state),
      cell(report.repositories),
      link,
    );
    return tr;
  }));
  return true;
}

$("order").addEventListener("submit", generate);
$("login").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut(""));
document.addEventListener("click", download);
loadHistory();
