// The demo page: sends the picked images and labels to POST /classify, draws one bar chart per image.
"use strict";
const form = document.getElementById("classify-form");
const fileInput = document.getElementById("images");
const dropZone = document.getElementById("drop-zone");
const errorBox = document.getElementById("error");
const results = document.getElementById("results");
let files = [];

function pick(list) {
  files = Array.from(list).filter((file) => file.type.startsWith("image/") || file.type === "");
  document.getElementById("picked").textContent = files.map((file) => file.name).join(", ");
}

fileInput.addEventListener("change", () => pick(fileInput.files));
dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("over"); });
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  pick(event.dataTransfer.files);
});

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function chart(result, file) {
  const box = document.createElement("div");
  box.className = "result";
  const image = document.createElement("img");
  image.src = URL.createObjectURL(file);
  image.alt = result.filename;
  const chartBox = document.createElement("div");
  chartBox.className = "chart";
  const title = document.createElement("h3");
  title.textContent = result.filename;
  chartBox.appendChild(title);
  for (const score of result.top_k) {
    const row = document.createElement("div");
    row.className = "bar-row";
    const label = document.createElement("span");
    label.textContent = score.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * score.probability).toFixed(1) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.textContent = (100 * score.probability).toFixed(1) + "%";
    row.append(label, bar, value);
    chartBox.appendChild(row);
  }
  box.append(image, chartBox);
  return box;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  results.replaceChildren();
  const labels = document.getElementById("labels").value.split(",").map((l) => l.trim()).filter(Boolean);
  if (files.length === 0) return showError("Pick or drop at least one image.");
  if (labels.length === 0) return showError("Type at least one label.");
  const body = new FormData();
  files.forEach((file) => body.append("images", file, file.name));
  labels.forEach((label) => body.append("labels", label));
  const template = document.getElementById("template").value.trim();
  if (template) body.append("template", template);
  body.append("top_k", String(labels.length));
  const headers = {};
  const key = document.getElementById("api-key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    const response = await fetch("/classify", { method: "POST", body, headers });
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      return showError(answer && answer.message ? `${answer.message} (HTTP ${response.status})`
                                                : `The server answered HTTP ${response.status}.`);
    }
    answer.results.forEach((result, i) => results.appendChild(chart(result, files[i])));
    document.getElementById("model").textContent =
      `model ${answer.model.name} (${answer.model.sha256}), ${answer.time_ms.toFixed(1)} ms`;
  } catch (error) {
    showError("Could not reach the server: " + error.message);
  } finally {
    button.disabled = false;
  }
});
