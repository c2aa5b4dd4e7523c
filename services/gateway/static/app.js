"use strict";
const $ = (id) => document.getElementById(id);
const CHART_BARS = 12;
let source = null;
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

async function generate(event) {
  event.preventDefault();
  showError("");
  const body = { period: $("period").value, layout: $("layout").value };
  if ($("notify").value.trim()) body.notify = $("notify").value.trim();
  $("generate").disabled = true;
  try {
    const response = await fetch("/api/reports", {
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
    showError(`The gateway did not answer: ${error}`);
  } finally {
    $("generate").disabled = false;
  }
}

function follow(report) {
  if (source) source.close();
  clearInterval(waitTimer);
  $("progress-box").hidden = false;
  $("result").hidden = true;
  $("progress").value = 0;
  $("progress").classList.remove("error");
  $("state").className = "";
  $("state").textContent = "Queued…";
  source = new EventSource(report.events_url);
  source.addEventListener("progress", (message) => {
    const step = JSON.parse(message.data);
    $("progress").value = percentOf(step);
    $("state").textContent = describe(step);
    clearInterval(waitTimer);
    if (step.queue) waitTimer = setInterval(() => { $("state").textContent = describe(step); }, 1000);
    if (step.state === "exported" || step.state === "failed") {
      source.close();
      if (step.state === "failed") $("state").className = "error";
      else showResult(report.status_url);
      loadHistory();
    }
  });
}

async function showResult(statusUrl) {
  const status = await (await fetch(statusUrl)).json();
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

async function loadHistory() {
  const response = await fetch("/api/reports?limit=20");
  if (!response.ok) return;
  const page = await response.json();
  $("history").replaceChildren(...page.items.map((report) => {
    const tr = document.createElement("tr");
    const link = cell("");
    if (report.download_url) {
      const a = document.createElement("a");
      a.href = report.download_url;
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
}

$("order").addEventListener("submit", generate);
loadHistory();
