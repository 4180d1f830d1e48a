// The admin page's buttons, and its refresh while a training job runs. No framework: the page is
// rendered by the server; this only posts to the backend's JSON API and updates progress bars.
"use strict";

const project = document.body.dataset.project;
const ACTIVE = new Set(["queued", "started", "deferred", "scheduled"]);
const POLL_RUNNING_MS = 2000;  // while a job runs: the progress bar moves
const POLL_IDLE_MS = 10000;    // otherwise: notice a job started elsewhere (Label Studio, the CLI)

const MESSAGE_KEY = "aesemo-message";  // the page reloads after most actions: the message outlives it

// A message stays until the admin dismisses it, across the page's reloads
function showMessage(text, isError) {
  sessionStorage.setItem(MESSAGE_KEY, JSON.stringify({text, isError}));
  renderMessage(text, isError);
}

function renderMessage(text, isError) {
  const box = document.getElementById("message");
  box.querySelector(".text").textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

document.querySelector("#message .dismiss").addEventListener("click", () => {
  sessionStorage.removeItem(MESSAGE_KEY);
  document.getElementById("message").hidden = true;
});

try {
  const kept = JSON.parse(sessionStorage.getItem(MESSAGE_KEY) || "null");
  if (kept) renderMessage(kept.text, kept.isError);
} catch (e) { sessionStorage.removeItem(MESSAGE_KEY); }

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body || {}),
  });
  let answer = {};
  try { answer = await response.json(); } catch (e) { /* an empty or non-JSON answer */ }
  if (!response.ok) {
    throw new Error(answer.error || `${response.status} ${response.statusText}`);
  }
  return answer;
}

// buttons with data-confirm act only once the admin has said yes
function onClick(selector, handler) {
  document.querySelectorAll(selector).forEach((button) => {
    button.addEventListener("click", async () => {
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      try {
        await handler(button);
      } catch (error) {
        showMessage(error.message, true);
        button.disabled = false;
      }
    });
  });
}

onClick("button.promote, #roll-back", async (button) => {
  const answer = await post(button.dataset.url, {confirm: true});
  showMessage(`Version ${answer.current || button.dataset.version} is now current.`, false);
  location.reload();
});

onClick("button.pin", async (button) => {
  const answer = await post(button.dataset.url);
  showMessage(`Version ${answer.version} is ${answer.pinned ? "pinned: retention keeps it" : "no longer pinned"}.`, false);
  location.reload();
});

onClick("#start-training", async (button) => {
  const epochs = document.getElementById("epochs").value;
  let answer;
  try {
    answer = await post(button.dataset.url, epochs ? {epochs: Number(epochs)} : {});
  } catch (error) {
    showMessage(error.message, true);
    location.reload();  // the refusal is listed among the recent jobs
    return;
  }
  showMessage(answer.merged ? `A job was already waiting; this request joined it (${answer.job_id}).`
                            : `Training job ${answer.job_id} queued.`, false);
  location.reload();
});

onClick("button.cancel", async (button) => {
  await post(button.dataset.url);
  showMessage("Cancellation asked; a running job stops at its next step.", false);
  location.reload();
});

onClick("#resync", async (button) => {
  const answer = await post(button.dataset.url);
  showMessage(`Resynced from Label Studio: ${answer.tasks} tasks, ${answer.votes} votes ` +
              `(${answer.added} added, ${answer.changed} changed, ${answer.removed} removed).`, false);
  location.reload();
});

function formatDuration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  return m ? `${m} min ${String(s).padStart(2, "0")} s` : `${s} s`;
}

// the running stage's own share done (admin_page.progress_fraction's rule): a count, or the
// training's steps; null (an indeterminate bar) for a stage that has neither
function fraction(job) {
  const p = job.progress || {};
  if (p.total) return Math.min(1, (p.done || 0) / p.total);
  if (p.state && p.state !== "training") return null;
  if (!(p.epochs && p.steps && p.epoch && p.step !== undefined)) return null;
  return Math.min(1, ((p.epoch - 1) * p.steps + p.step) / (p.epochs * p.steps));
}

function stageTimes(stages) {
  return (stages || []).map((s) => `${s.name} ${s.seconds >= 1 ? formatDuration(s.seconds) : "<1 s"}`).join(" · ");
}

function updateCard(card, job) {
  const p = job.progress || {};
  card.dataset.status = job.status;
  card.querySelector(".status").textContent = job.status;
  card.querySelector(".stage").textContent = p.state && p.state !== job.status ? (p.title || p.state) : "";
  const bar = card.querySelector("progress");
  const done = fraction(job);
  if (done === null) bar.removeAttribute("value"); else bar.value = done;
  const training = p.state === "training";
  card.querySelector(".count").textContent = p.total && p.unit ? `${p.done || 0} of ${p.total} ${p.unit}` : "";
  card.querySelector(".epoch").textContent = training && p.epoch ? `epoch ${p.epoch}/${p.epochs}` : "";
  card.querySelector(".step").textContent = training && p.step ? `step ${p.step}/${p.steps}` : "";
  card.querySelector(".loss").textContent = training && p.loss !== undefined ? `loss ${p.loss.toFixed(3)}` : "";
  card.querySelector(".eta").textContent = p.eta_s !== undefined ?
    `ETA ${training && p.eta_at_most ? "at most " : ""}${formatDuration(p.eta_s)}` : "";
  card.querySelector(".stopping").textContent = p.stopping || "";
  card.querySelector(".stages").textContent = stageTimes(p.stages);
}

async function poll() {
  const shown = new Set((document.body.dataset.activeJobs || "").split(",").filter(Boolean));
  let delay = shown.size ? POLL_RUNNING_MS : POLL_IDLE_MS;
  try {
    // the URL comes from the server, so a backend behind a proxy's sub-path works too
    const response = await fetch(document.body.dataset.jobsUrl, {credentials: "same-origin"});
    if (response.ok) {
      const jobs = (await response.json()).jobs;
      const active = jobs.filter((job) => ACTIVE.has(job.status));
      // a job ended, or one started that this page does not show: the page's versions, jobs
      // and consensus have changed, so render it again
      const ended = [...shown].some((id) => !active.some((job) => job.job_id === id));
      const unseen = active.some((job) => !shown.has(job.job_id));
      if (ended || unseen) {
        location.reload();
        return;
      }
      for (const job of active) {
        const card = document.querySelector(`.job[data-job-id="${job.job_id}"]`);
        if (card) updateCard(card, job);
      }
    }
  } catch (error) {
    delay = POLL_IDLE_MS;  // the backend is restarting, say: try again later, quietly
  }
  setTimeout(poll, delay);
}

if (project) {
  setTimeout(poll, document.body.dataset.activeJobs ? POLL_RUNNING_MS : POLL_IDLE_MS);
}
