// The page's behaviour: pick or drop an image, POST it to /predict, draw the top-k bars.
// Plain DOM, no framework or build step; text from the server goes in via textContent only.
"use strict";

const drop = document.getElementById("drop");
const input = document.getElementById("file");
const errorBox = document.getElementById("error");
let previewUrl = null;
let overlayUrl = null;
let canExplain = false;

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
  document.getElementById("result").hidden = false;
}

async function classify(file) {
  errorBox.hidden = true;
  document.getElementById("explanation").hidden = true;
  const form = new FormData();
  form.append("file", file, file.name);
  // A refused upload (400, 413, 415) is shown on the page with the server's reason.
  const response = await fetch("/predict", { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) {
    showError(`Could not classify ${file.name}: ${body.detail}`);
    return;
  }
  showPrediction(file, body);
  if (canExplain) await showExplanation(form);
}

// Grad-CAM: the server draws where the network looked; only asked for when /health says the
// model supports it (a convolutional backbone).
async function showExplanation(form) {
  const response = await fetch("/explain", { method: "POST", body: form });
  if (!response.ok) return;
  if (overlayUrl) URL.revokeObjectURL(overlayUrl);
  overlayUrl = URL.createObjectURL(await response.blob());
  document.getElementById("overlay").src = overlayUrl;
  document.getElementById("explanation").hidden = false;
}

input.addEventListener("change", () => {
  if (!input.files.length) return;
  const file = input.files[0];
  input.value = ""; // so that picking the same file again classifies it again
  classify(file).catch((e) => showError(String(e)));
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
  if (file) classify(file).catch((e) => showError(String(e)));
});
showModel().catch((e) => showError(`The server did not answer: ${e}`));
