// The page's behaviour: pick or drop an image, POST it to /predict, draw the top-k bars.
// Plain DOM, no framework or build step; text from the server goes in via textContent only.
"use strict";

const drop = document.getElementById("drop");
const input = document.getElementById("file");
const errorBox = document.getElementById("error");
let previewUrl = null;
let overlayUrl = null;
let canExplain = false;
// Two quick uploads can be answered out of order (a big photo decodes slower than a small
// one). Only the latest upload may draw: each upload takes a number, aborts the requests
// still running for the one before, and every answer checks its number before drawing.
let latest = 0;
let pending = null; // the AbortController of the latest upload's requests

async function showModel() {
  const response = await fetch("/health");
  const health = await response.json();
  canExplain = health.explain;
  document.getElementById("model").textContent =
    `${health.model} (run ${health.run}): ${health.classes.length} classes`;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

function label(score) {
  return score.display_name === score.class_name
    ? score.display_name
    : `${score.display_name} (${score.class_name})`;
}

function bar(score) {
  const row = document.createElement("li");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = label(score);
  name.title = name.textContent;
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "bar";
  fill.style.display = "block";
  fill.style.width = percent(score.probability);
  track.appendChild(fill);
  const value = document.createElement("span");
  value.className = "value";
  value.textContent = percent(score.probability);
  row.append(name, track, value);
  return row;
}

function showPrediction(file, result) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  document.getElementById("preview").src = previewUrl;
  document.getElementById("source").textContent = file.name;
  document.getElementById("prediction").textContent =
    `${label(result)} ${percent(result.probability)}`;
  document.getElementById("bars").replaceChildren(...result.top_k.map(bar));
  showUnfamiliar(result);
  document.getElementById("result").hidden = false;
}

// An image unlike the training images (a cat given to a digit classifier) still gets a
// class; the page says so, with the score and the run's threshold.
function showUnfamiliar(result) {
  const note = document.getElementById("unfamiliar");
  note.hidden = result.is_unfamiliar !== true;
  if (!note.hidden) {
    note.textContent =
      `Unfamiliar input: unlike the images the model was trained on (score ` +
      `${result.unfamiliar.toFixed(3)}, above ${result.unfamiliar_threshold.toFixed(3)}), ` +
      `so the prediction may mean nothing.`;
  }
}

// Start classifying `file`, superseding any upload still in progress.
function upload(file) {
  if (pending) pending.abort();
  pending = new AbortController();
  const ticket = { number: ++latest, signal: pending.signal };
  classify(file, ticket).catch((e) => {
    // An aborted request belongs to a superseded upload: nothing to show.
    if (e.name !== "AbortError" && ticket.number === latest) failed(file, e.message);
  });
}

// A failed upload: the reason in words, and no earlier prediction left beside it as if it
// were this file's.
function failed(file, reason) {
  document.getElementById("result").hidden = true;
  showError(`Could not classify ${file.name}: ${reason}`);
}

// What the server said, in words: its JSON `detail` (400, 413, 415, 503) after the status,
// or the status alone when the body is not ours (a proxy's page, a crash's traceback).
async function refusal(response) {
  const status = `the server answered ${response.status} ${response.statusText}`.trim();
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json().catch(() => null) : null;
  if (body && typeof body.detail === "string") return `${status}: ${body.detail}`;
  if (response.status >= 500) return `${status}; the server failed, not your image: try again.`;
  return status;
}

// fetch, with a network failure (server stopped, connection refused) said in words.
async function post(path, form, signal) {
  try {
    return await fetch(path, { method: "POST", body: form, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Error("the server did not answer: is graft serve still running?");
  }
}

async function classify(file, ticket) {
  errorBox.hidden = true;
  document.getElementById("explanation").hidden = true;
  const form = new FormData();
  form.append("file", file, file.name);
  // A refused upload (400, 413, 415) is shown on the page with the server's reason.
  const response = await post("/predict", form, ticket.signal);
  if (!response.ok) {
    const reason = await refusal(response);
    if (ticket.number === latest) failed(file, reason);
    return;
  }
  const body = await response.json();
  if (ticket.number !== latest) return;
  showPrediction(file, body);
  // The overlay is extra: if it cannot be had, the prediction stands without it.
  if (canExplain) await showExplanation(form, ticket).catch(() => {});
}

// Grad-CAM: the server draws where the network looked; only asked for when /health says the
// model supports it (a convolutional backbone).
async function showExplanation(form, ticket) {
  const response = await post("/explain", form, ticket.signal);
  if (!response.ok) return;
  const overlay = await response.blob();
  if (ticket.number !== latest) return;
  if (overlayUrl) URL.revokeObjectURL(overlayUrl);
  overlayUrl = URL.createObjectURL(overlay);
  document.getElementById("overlay").src = overlayUrl;
  document.getElementById("explanation").hidden = false;
}

input.addEventListener("change", () => {
  if (!input.files.length) return;
  const file = input.files[0];
  input.value = ""; // so that picking the same file again classifies it again
  upload(file);
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) upload(file);
});
showModel().catch((e) => showError(`The server did not answer: ${e}`));
