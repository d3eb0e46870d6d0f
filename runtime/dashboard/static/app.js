// The line's page: live frames from /api/events (Server-Sent Events), everything else from /api/state once a
// second. Data from the stream is only ever set as text (never as markup).
"use strict";

const STATE_EVERY_MS = 1000;
const SHOWN_KEPT = 5000;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

// Frames shown, for tests and for anyone measuring: {frame, seq, at: Date.now() when the picture was decoded}.
const shown = [];
window.diadShown = shown;

if (new URLSearchParams(location.search).has("token")) {
  history.replaceState(null, "", location.pathname);  // the page's cookie carries the token from here on
}

function number(value, digits) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function clock(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "-";
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// ------------------------------------------------------------------------------------------------ live frames
function showFrame(event) {
  const data = JSON.parse(event.data);
  const image = $("frame");
  image.onload = () => {
    shown.push({frame: data.frame, seq: data.seq, at: Date.now()});
    if (shown.length > SHOWN_KEPT) shown.splice(0, shown.length - SHOWN_KEPT);
    image.dataset.frame = data.frame;
  };
  image.src = "data:image/jpeg;base64," + data.jpeg;
  const verdict = data.error ? "error" : (data.label || "uncalibrated");
  const judged = data.pred_score === null ? "" : ` (pred_score ${number(data.pred_score, 3)})`;
  const score = data.error ? data.error : `score ${number(data.score, 4)}${judged}`;
  $("frame-caption").textContent = `frame ${data.frame} · ${data.class || "-"} · ${verdict} · ${score}`;
  $("frame-caption").className = verdict;
}

function connectFrames() {
  const events = new EventSource("api/events");
  events.addEventListener("frame", showFrame);
  events.onerror = () => { $("frame-caption").textContent = "live view interrupted; reconnecting"; };
}

// --------------------------------------------------------------------------------------------------- state
function showSource(source) {
  const badge = $("source-state");
  let text = source.state;
  if (source.state === "reconnecting") text += ` since ${clock(source.since)} (attempt ${source.attempts})`;
  else if (source.state === "connected" && source.reconnects) text += ` (${source.reconnects} reconnect(s))`;
  badge.textContent = text;
  badge.className = `badge ${source.state}`;
  $("source-name").textContent = source.name;
  $("dropped").textContent = source.dropped;
  $("missed").textContent = source.missed;
  $("skipped").textContent = source.skipped;
}

function showModel(model) {
  const node = $("model");
  node.textContent = `model ${model.manifest_sha256.slice(0, 12)} · ${model.plan} · ${model.backend}`;
  node.title = `manifest sha256 ${model.manifest_sha256}`;
}

function showCounts(state) {
  const rows = Object.entries(state.classes).map(([name, counts]) => {
    const row = element("tr");
    row.append(element("th", name), element("td", counts.frames), element("td", counts.rejects),
               element("td", counts.errors));
    return row;
  });
  $("count-rows").replaceChildren(...rows);
  $("total-frames").textContent = state.totals.frames;
  $("total-rejects").textContent = state.totals.rejects;
  $("total-errors").textContent = state.totals.errors;
  $("counts").dataset.lastFrame = state.last_frame === null ? "" : state.last_frame;
  $("through").textContent = state.last_frame === null ? "" : `through frame ${state.last_frame}`;
  const w = state.window;
  $("fps").textContent = number(w.fps, 1);
  $("latency").textContent = `${number(w.p50_ms, 1)} / ${number(w.p95_ms, 1)} / ${number(w.p99_ms, 1)} ms`;
  const kinds = Object.entries(state.errors).map(([kind, count]) => `${kind} ${count}`);
  $("error-kinds").textContent = kinds.length ? kinds.join(", ") : "none";
}

function openReject(link) {
  $("viewer-image").src = link.href;
  $("viewer-caption").textContent = link.title;
  $("viewer").showModal();
}

function showRejects(rejects) {
  const list = $("reject-list");
  const ids = rejects.map((r) => r.id).join(",");
  if (list.dataset.ids === ids) return;
  list.dataset.ids = ids;
  if (!rejects.length) {
    list.replaceChildren(element("p", "none yet", "quiet"));
    return;
  }
  list.replaceChildren(...rejects.map((info) => {
    const figure = element("figure", undefined, "reject");
    figure.dataset.frame = info.frame;
    const link = element("a");
    link.href = `rejects/${info.id}.jpg`;
    link.target = "_blank";
    link.title = `frame ${info.frame} (${info.class}) score ${number(info.score, 4)}, threshold ` +
      `${number(info.threshold, 4)}, pred_score ${number(info.pred_score, 3)}, ${info.time}`;
    link.addEventListener("click", (event) => { event.preventDefault(); openReject(link); });
    const thumb = element("img");
    thumb.src = `rejects/${info.id}.thumb.jpg`;
    thumb.alt = `rejected frame ${info.frame}`;
    link.append(thumb);
    const caption = element("figcaption");
    caption.append(element("b", `${info.class} #${info.frame}`), element("br"),
                   `score ${number(info.score, 4)} > ${number(info.threshold, 4)}`, element("br"),
                   String(info.time).replace("T", " ").slice(0, 23));
    figure.append(link, caption);
    return figure;
  }));
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function driftPlot(report) {
  const width = 260, height = 64, plot = svg("svg", {viewBox: `0 0 ${width} ${height + 12}`, class: "plot"});
  const h = report.histogram;
  if (!h) return plot;
  const x = (value) => ((value - h.low) / (h.high - h.low)) * width;
  const ref = report.reference;
  if (ref) {
    plot.append(svg("rect", {x: x(ref.min), y: 0, width: Math.max(x(ref.threshold) - x(ref.min), 1), height,
                             class: "band"}));
  }
  const most = Math.max(...h.counts, 1), bar = width / h.counts.length;
  h.counts.forEach((count, i) => {
    const tall = (count / most) * (height - 4);
    plot.append(svg("rect", {x: i * bar + 0.5, y: height - tall, width: bar - 1, height: tall, class: "bar"}));
  });
  if (ref) {
    plot.append(svg("line", {x1: x(ref.threshold), x2: x(ref.threshold), y1: 0, y2: height, class: "threshold"}));
    plot.append(svg("line", {x1: x(ref.max), x2: x(ref.max), y1: 0, y2: height, class: "max"}));
  }
  const median = x(report.quantiles.p50);
  plot.append(svg("line", {x1: median, x2: median, y1: 0, y2: height, class: "median"}));
  const low = svg("text", {x: 0, y: height + 11, class: "axis"});
  low.textContent = number(h.low, 3);
  const high = svg("text", {x: width, y: height + 11, class: "axis end"});
  high.textContent = number(h.high, 3);
  plot.append(low, high);
  return plot;
}

function showDrift(drift) {
  const cards = Object.entries(drift).map(([name, report]) => {
    const card = element("div", undefined, `drift-card ${report.status.replace(" ", "-")}`);
    card.dataset.class = name;
    card.dataset.status = report.status;
    const title = element("h3", `${name}: ${report.status}`);
    const note = element("p", `${report.message} (${report.frames} recent frames)`, "note");
    card.append(title, driftPlot(report), note);
    return card;
  });
  $("drift-plots").replaceChildren(...cards);
}

async function pollState() {
  try {
    const response = await fetch("api/state", {cache: "no-store"});
    if (response.ok) {
      const state = await response.json();
      showSource(state.source);
      showModel(state.model);
      showCounts(state);
      showRejects(state.rejects);
      showDrift(state.drift);
      document.body.dataset.updated = state.time;
    } else {
      $("source-state").textContent = `dashboard answered ${response.status}`;
    }
  } catch (error) {
    $("source-state").textContent = "stream not reachable";
    $("source-state").className = "badge gone";
  }
  setTimeout(pollState, STATE_EVERY_MS);
}

connectFrames();
pollState();
