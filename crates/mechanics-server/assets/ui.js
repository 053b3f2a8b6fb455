// The Mechanics dashboard's script (ours, served from the binary at /ui/assets/ui.js).
// Every page works without it; it adds:
// - live refresh: every element with `data-live="URL"` is fetched again every 2 s while the tab
//   is visible, and replaced by the element with the same id in the answer (an element whose
//   new version has no `data-live` has finished and is left alone); rows with
//   `data-live-row="ID"` are refreshed together from /ui/tasks/rows, keeping their checkboxes;
// - forms with `data-async="ID"` are sent without leaving the page, and the answer replaces
//   the element with that id;
// - forms with `data-json-field="NAME"` check that the field is JSON before they are sent;
// - the "select all" checkbox of the tasks list.
"use strict";

const LIVE_INTERVAL_MS = 2000;

function parse(html) {
  return new DOMParser().parseFromString(html, "text/html");
}

async function fetchText(url, options) {
  const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options));
  const text = await response.text();
  if (!response.ok) {
    const doc = parse(text);
    const message = doc.querySelector("p.error");
    throw new Error(message ? message.textContent : response.status + " " + response.statusText);
  }
  return text;
}

function showProblem(message) {
  const flash = document.getElementById("flash");
  if (flash) {
    flash.textContent = message;
    flash.hidden = false;
  }
}

function replaceById(current, doc) {
  const fresh = doc.getElementById(current.id);
  if (fresh) {
    current.replaceWith(document.importNode(fresh, true));
  }
}

async function refreshLiveElements() {
  for (const element of document.querySelectorAll("[data-live][id]")) {
    try {
      replaceById(element, parse(await fetchText(element.dataset.live)));
    } catch (problem) {
      showProblem(problem.message);
    }
  }
}

async function refreshLiveRows() {
  const rows = Array.from(document.querySelectorAll("tr[data-live-row]"));
  if (rows.length === 0) {
    return;
  }
  const query = new URLSearchParams();
  for (const row of rows) {
    query.append("id", row.dataset.liveRow);
  }
  try {
    const doc = parse(await fetchText("/ui/tasks/rows?" + query.toString()));
    for (const row of rows) {
      const fresh = doc.getElementById(row.id);
      if (!fresh) {
        continue;
      }
      const box = row.querySelector("input[type=checkbox]");
      const freshBox = fresh.querySelector("input[type=checkbox]");
      if (box && freshBox) {
        freshBox.checked = box.checked;
      }
      row.replaceWith(document.importNode(fresh, true));
    }
  } catch (problem) {
    showProblem(problem.message);
  }
}

let refreshing = false;
async function tick() {
  if (refreshing || document.visibilityState !== "visible") {
    return;
  }
  refreshing = true;
  try {
    await refreshLiveElements();
    await refreshLiveRows();
  } finally {
    refreshing = false;
  }
}

function checkJson(form) {
  const field = form.elements.namedItem(form.dataset.jsonField);
  const problem = form.querySelector("[data-json-error]");
  try {
    JSON.parse(field.value);
    if (problem) {
      problem.hidden = true;
    }
    return true;
  } catch (error) {
    if (problem) {
      problem.textContent = form.dataset.jsonField + ": not valid JSON: " + error.message;
      problem.hidden = false;
    }
    return false;
  }
}

async function submitAsync(form) {
  const target = document.getElementById(form.dataset.async);
  try {
    const text = await fetchText(form.action, {
      method: "POST",
      headers: { "X-UI-Fragment": "1", "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(new FormData(form)).toString(),
    });
    if (target) {
      replaceById(target, parse(text));
    }
  } catch (problem) {
    showProblem(problem.message);
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.jsonField && !checkJson(form)) {
    event.preventDefault();
    return;
  }
  if (form.dataset.async) {
    event.preventDefault();
    submitAsync(form);
  }
});

document.addEventListener("change", (event) => {
  if (event.target.id === "select-all") {
    for (const box of document.querySelectorAll("#task-rows input[type=checkbox]")) {
      box.checked = event.target.checked;
    }
  }
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") {
    tick();
  }
});

setInterval(tick, LIVE_INTERVAL_MS);
