// instruct-museformer's page: open a score, render it, hear it, see it, re-render a passage, keep a take.
// Plain DOM and fetch; every file it loads comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const RULES = ["min_key_down_ms", "tempo_band", "tempo_anchor", "fermata_hold", "dynamics_band", "tempo_plan",
               "velocity_plan", "articulation_plan", "timing_plan"];
const state = { info: null, session: null, viewing: null, axis: null, busy: false };

function say(text, isError) {
  const box = $("message");
  box.textContent = text ? String(text).split("\n")[0] : "";
  box.className = "message" + (isError ? " error" : "");
  box.hidden = !text;
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("the server does not answer (is instruct-render serve still running?)");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  }
  return body;
}

const post = (path, data) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });

// ------------------------------------------------------------------------------------------ settings
function buildControls(info) {
  const style = $("style");
  style.innerHTML = "";
  for (const [key, levels] of Object.entries(info.style)) {
    const label = document.createElement("label");
    label.textContent = key + " ";
    const select = document.createElement("select");
    select.id = "style-" + key;
    select.dataset.key = key;
    for (const level of levels) {
      const option = document.createElement("option");
      option.value = option.textContent = level;
      option.selected = level === "mid";
      select.appendChild(option);
    }
    label.appendChild(select);
    style.appendChild(label);
  }
  if (!Object.keys(info.style).length) style.textContent = "This model was trained without style controls.";
  for (const key of RULES) $(key).value = info.defaults[key];
  $("keep_unisons").checked = info.defaults.keep_unisons;
  $("allow_deletions").checked = info.defaults.allow_deletions;
}

function settings() {
  const style = {};
  for (const select of document.querySelectorAll("#style select")) style[select.dataset.key] = select.value;
  const number = (id) => Number($(id).value);
  return {
    style, seed: Math.trunc(number("seed")), expected_value: $("mode").value === "expected",
    temperature: number("temperature"), topp: number("topp"),
    min_key_down_ms: number("min_key_down_ms"), tempo_band: number("tempo_band"), tempo_anchor: $("tempo_anchor").value,
    fermata_hold: number("fermata_hold"), dynamics_band: number("dynamics_band"),
    tempo_plan: number("tempo_plan"), velocity_plan: number("velocity_plan"),
    articulation_plan: number("articulation_plan"), timing_plan: number("timing_plan"),
    keep_unisons: $("keep_unisons").checked, allow_deletions: $("allow_deletions").checked,
  };
}

// ------------------------------------------------------------------------------------------ score
async function openFile(file) {
  if (!file) return;
  if (file.size > state.info.max_upload_bytes) {
    say(`${file.name}: file larger than ${Math.floor(state.info.max_upload_bytes / 1048576)} MiB`, true);
    return;
  }
  say(`reading ${file.name} ...`);
  try {
    setSession(await api("/api/open?name=" + encodeURIComponent(file.name),
      { method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file }));
    say("");
  } catch (e) {
    say(e.message, true);
  }
  $("file").value = "";
}

async function openExample() {
  const name = $("example").value;
  if (!name) return;
  say(`reading ${name} ...`);
  try {
    setSession(await post("/api/example", { name }));
    say("");
  } catch (e) {
    say(e.message, true);
  }
}

function setSession(session) {
  state.session = session;
  state.viewing = null;
  $("score-info").textContent = `${session.name}: ${session.bars} bars, ${session.notes} notes` +
    (session.notes_to_play !== session.notes ? ` (${session.notes - session.notes_to_play} unison repeats struck once)` : "") +
    (session.tempo ? `. Tempo: ${session.tempo}` : "");
  $("render").disabled = state.busy;
  const idle = [];
  if (!session.rules.notated_tempo) idle.push("the tempo band's notated centre (the score states no tempo)");
  if (!session.rules.fermata_hold) idle.push("the fermata hold (no fermata)");
  if (!session.rules.dynamics_band) idle.push("the dynamics band (no dynamics marked)");
  $("rules-note").textContent = idle.length ? "For this score these do nothing: " + idle.join("; ") + "."
                                            : "Every rule below applies to this score.";
  for (const id of ["bar-from", "bar-to"]) $(id).max = session.bars;
  $("bar-from").value = Math.min(Math.max(1, Math.floor(session.bars / 3)), session.bars);
  $("bar-to").value = Math.min(Number($("bar-from").value) + 3, session.bars);
  for (const id of ["listen-section", "see-section", "steer-section"]) $(id).hidden = true;
  $("score-midi").href = `/api/take/${session.id}/0/performance.mid`;
  setAudio($("score-audio"), `/api/take/${session.id}/0/audio.oga`);
  renderTakes();
}

function setAudio(element, url, keepPlaying) {
  if (!state.info.audio) { element.hidden = true; return; }
  const playing = keepPlaying && !element.paused && !element.ended, at = element.currentTime;
  element.src = url;
  element.load();
  if (playing) {  // a longer version of what is playing (more bars rendered): go on from the same place
    element.addEventListener("loadedmetadata", () => { element.currentTime = at; element.play().catch(() => {}); }, { once: true });
  }
}

function showPreview(job, bars) {
  // the bars a whole-piece render has finished so far are final: they can be heard while the rest renders
  $("listen-section").hidden = false;
  $("take-label").textContent = `the first ${bars} bars (the rest is rendering)`;
  setAudio($("perf-audio"), `/api/job/${job.id}/preview.oga?bars=${bars}`, true);
}

// ------------------------------------------------------------------------------------------ render jobs
async function startRender(passage) {
  if (!state.session || state.busy) return;
  const request = { session: state.session.id, settings: settings() };
  if (passage) {
    request.first_bar = Math.trunc(Number($("bar-from").value));
    request.last_bar = Math.trunc(Number($("bar-to").value));
  }
  setBusy(true, passage ? `bars ${request.first_bar}-${request.last_bar}` : "the whole piece");
  try {
    let job = await post("/api/render", request);
    let previewBars = 0;
    while (job.state === "running") {
      showProgress(job);
      const audio = $("perf-audio");
      if (!passage && state.info.audio && job.preview_bars > previewBars && (previewBars === 0 || audio.paused || audio.ended
          || audio.duration - audio.currentTime < 5)) {
        previewBars = job.preview_bars;
        showPreview(job, previewBars);
      }
      await new Promise((resolve) => setTimeout(resolve, 400));
      job = await api("/api/job/" + job.id);
    }
    if (job.state === "error") throw new Error(job.error);
    showProgress(job);
    await refreshSession();
    showTake(job.take.id);
    say(passage ? `take ${job.take.id}: bars ${job.take.passage[0]}-${job.take.passage[1]} re-rendered in ${job.take.render_s} s; compare, then keep the take you prefer`
                : `rendered in ${job.take.render_s} s`);
  } catch (e) {
    say(e.message, true);
  } finally {
    setBusy(false);
  }
}

function setBusy(busy, what) {
  state.busy = busy;
  $("render").disabled = busy || !state.session;
  $("passage").disabled = busy;
  $("progress-box").hidden = !busy;
  document.body.dataset.busy = busy ? "1" : "";
  if (busy) {
    $("progress").removeAttribute("value");
    $("progress-text").textContent = `rendering ${what} ...`;
  }
}

function showProgress(job) {
  if (job.total > 1 || job.done > 0) $("progress").value = job.done / job.total;
  $("progress-text").textContent = `segment ${Math.min(job.done + 1, job.total)} of ${job.total} · ${job.elapsed_s} s`;
}

async function refreshSession() {
  state.session = await api("/api/session/" + state.session.id);
  renderTakes();
}

// ------------------------------------------------------------------------------------------ takes
function takeById(id) { return state.session.takes.find((t) => t.id === id); }

function showTake(id) {
  const take = takeById(id);
  const sid = state.session.id;
  const fromPreview = $("take-label").textContent.includes("rest is rendering");
  state.viewing = id;
  const version = `?kept=${state.session.kept}`;
  $("take-label").textContent = `take ${take.id}` + (take.passage ? ` (bars ${take.passage[0]}-${take.passage[1]})` : "") + `: ${take.label}`;
  setAudio($("perf-audio"), `/api/take/${sid}/${id}/audio.oga`, fromPreview);
  $("take-midi").href = `/api/take/${sid}/${id}/performance.mid`;
  $("roll").src = `/api/take/${sid}/${id}/roll.png`;
  $("curves").src = `/api/take/${sid}/${id}/curves.png${version}`;
  state.axis = null;
  api(`/api/take/${sid}/${id}/roll.json`).then((axis) => { if (state.viewing === id) state.axis = axis; }).catch(() => {});
  for (const id of ["listen-section", "see-section", "steer-section"]) $(id).hidden = false;
  renderTakes();
}

function joinText(take) {
  if (!take.joins.length) return "";
  return take.joins.map((j) => `bar ${j.bar}: ${fmt(j.gap_ms)} (${fmt(j.base_gap_ms)})`).join("; ");
}

const fmt = (x) => (x === null || x === undefined ? "n/a" : Math.round(x));

function renderTakes() {
  const body = $("takes").querySelector("tbody");
  body.innerHTML = "";
  if (!state.session) return;
  for (const take of state.session.takes) {
    const row = document.createElement("tr");
    row.dataset.take = take.id;
    if (take.id === state.viewing) row.className = "viewing";
    const keep = document.createElement("input");
    keep.type = "radio";
    keep.name = "keep";
    keep.checked = take.kept;
    keep.title = "keep this take: the base of the next passage and the final MIDI";
    keep.addEventListener("change", () => keepTake(take.id));
    const cells = [keep, `take ${take.id}`, take.passage ? `${take.passage[0]}-${take.passage[1]}` : "all",
      take.label, joinText(take), `${take.render_s} s`];
    for (const content of cells) {
      const cell = document.createElement("td");
      if (content instanceof Node) cell.appendChild(content); else cell.textContent = content;
      row.appendChild(cell);
    }
    const actions = document.createElement("td");
    actions.appendChild(button("view", () => showTake(take.id)));
    if (take.passage) actions.appendChild(button("play the passage", () => playPassage(take.id)));
    row.appendChild(actions);
    body.appendChild(row);
  }
  $("download").href = state.session.kept ? `/api/session/${state.session.id}/final.mid` : "#";
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

async function keepTake(id) {
  try {
    state.session = await post("/api/keep", { session: state.session.id, take: id });
    showTake(id);
    say(`take ${id} kept`);
  } catch (e) {
    say(e.message, true);
  }
}

function playPassage(id) {
  if (state.viewing !== id) showTake(id);
  const take = takeById(id);
  const times = take.bar_times_s;
  const first = times.slice(take.passage[0] - 1).find((t) => t !== null);
  const audio = $("perf-audio");
  const start = Math.max(0, (first || 0) - 2.0);
  const play = () => { audio.currentTime = start; audio.play().catch(() => {}); };
  if (audio.readyState >= 1) play(); else audio.addEventListener("loadedmetadata", play, { once: true });
}

// ------------------------------------------------------------------------------------------ playhead
function movePlayhead() {
  const audio = $("perf-audio");
  const head = $("playhead");
  const axis = state.axis;
  const image = $("roll");
  if (axis && image.naturalWidth && !audio.paused) {
    const scale = image.clientWidth / axis.width_px;
    const x = (axis.x0_px + (audio.currentTime - axis.t0_s) / (axis.t1_s - axis.t0_s) * (axis.x1_px - axis.x0_px)) * scale;
    head.style.left = `${x}px`;
    head.style.display = "block";
    const box = $("roll-box");
    if (x < box.scrollLeft + 40 || x > box.scrollLeft + box.clientWidth - 40) box.scrollLeft = Math.max(0, x - box.clientWidth / 3);
  }
  requestAnimationFrame(movePlayhead);
}

// ------------------------------------------------------------------------------------------ start
async function init() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    say(e.message, true);
    return;
  }
  const info = state.info;
  $("model").textContent = `model: ${info.checkpoint}`;
  buildControls(info);
  const examples = $("example");
  for (const name of info.examples) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    examples.appendChild(option);
  }
  $("open-example").disabled = !info.examples.length;
  if (!info.audio) {
    $("audio-missing").textContent = info.audio_missing;
    $("audio-missing").hidden = false;
  }
  $("file").addEventListener("change", (e) => openFile(e.target.files[0]));
  $("open-example").addEventListener("click", openExample);
  $("render").addEventListener("click", () => startRender(false));
  $("passage").addEventListener("click", () => startRender(true));
  requestAnimationFrame(movePlayhead);
  document.body.dataset.ready = "1";
}

init();
