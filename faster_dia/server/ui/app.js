// faster-dia's page. It speaks the server's public HTTP API like any other client (same engine, same batches,
// same API keys) and loads nothing from any other host.
//
// Generation asks for server-sent events with 24 kHz 16-bit PCM: the deltas are played with the Web Audio API
// as they arrive, Dia2's word events are shown as they come, and the received PCM becomes the WAV behind the
// result's <audio> element, so what is replayed and downloaded as WAV is what was heard. Other download formats
// are made again by the server from the same seed and settings, which give the same audio.
"use strict";

const PCM_RATE = 24000;
const KEY_STORAGE = "faster-dia.api-key";
const DRAFT_STORAGE = "faster-dia.script";
const MAX_RECORD_SECONDS = 20;
const EXTENSIONS = { wav: "wav", mp3: "mp3", opus: "opus", aac: "aac", flac: "flac" };
const EXAMPLES = [
  ["A knock at the door",
    "[S1] Did you hear that? [S2] Hear what? [S1] Someone knocked. Twice. (gasps) [S2] It's the wind. " +
    "It's always the wind. [S1] The wind doesn't knock twice. [S2] (laughs) Fine, I'll go and look."],
  ["Podcast opening",
    "[S1] Welcome back to the show! Today we're talking about why everyone suddenly bakes bread. " +
    "[S2] Because it's cheaper than therapy. (laughs) [S1] Fair. So, where did you start? " +
    "[S2] With a sourdough starter I named Gerald. [S1] Of course you did."],
  ["Support call",
    "[S1] Thanks for calling, how can I help? [S2] Hi. My internet stopped working this morning. " +
    "[S1] I'm sorry about that. Have you tried turning the router off and on again? " +
    "[S2] (sighs) Yes. Three times. [S1] Okay, let me check the line from here."],
];
// Where the server's error.param is shown; a param with a field of its own (temperature, seed, ...) maps to it.
const PARAM_SLOTS = {
  input: "input", text: "input", model: "model", seed: "seed", speed: "speed", speed_factor: "speed",
  response_format: "format", voice: "voices", voices: "voices", cfg_filter_k: "cfg_filter_top_k",
  text_temperature: "temperature", audio_temperature: "temperature", text_top_k: "top_k", audio_top_k: "top_k",
  name: "voice-name", audio: "voice-file", audio_sample: "voice-file", file: "voice-file",
  transcript: "voice-transcript",
};

const $ = (selector) => document.querySelector(selector);
const page = {
  config: null,
  voices: [],
  last: null,          // the last finished result
  history: [],
  run: null,           // the generation in progress
  audio: null,         // the AudioContext, made on the first generation (a user gesture)
  clip: null,          // the voice clip to save
  clipAutoText: "",    // the transcript speech recognition filled in
  recorder: null,
};

// ---------------------------------------------------------------------- talking to the server

class PageError extends Error {
  constructor(message, param = null, code = null) {
    super(message);
    this.param = param;
    this.code = code;
  }
}

function apiKey() {
  return $("#api-key").value.trim();
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new PageError("The server cannot be reached. Is faster-dia still running?");
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      return new PageError(body.error.message, body.error.param, body.error.code);
    }
  } catch (_) { /* not JSON: fall through */ }
  return new PageError(`The server answered ${response.status} ${response.statusText}.`);
}

// ---------------------------------------------------------------------- errors next to their fields

function slotOf(error, fallback) {
  if (error.code === "invalid_api_key") return "key";
  const param = error.param || "";
  const slot = PARAM_SLOTS[param] || param;
  return slot && document.getElementById(`err-${slot}`) ? slot : fallback;
}

function showError(error, fallback = "generate") {
  const slot = slotOf(error, fallback);
  const box = document.getElementById(`err-${slot}`);
  box.textContent = error.message;
  box.hidden = false;
  for (const field of document.querySelectorAll(`[data-error="${slot}"]`)) field.setAttribute("aria-invalid", "true");
  if (slot === "key") $("#key-panel").open = true;
  const field = document.querySelector(`[data-error="${slot}"]`);
  if (field && !field.disabled) field.focus({ preventScroll: true });
  (field || box).scrollIntoView({ block: "nearest", behavior: "smooth" });
}

function clearErrors(...slots) {
  const boxes = slots.length ? slots.map((s) => document.getElementById(`err-${s}`)).filter(Boolean)
    : document.querySelectorAll(".field-error");
  for (const box of boxes) {
    box.hidden = true;
    box.textContent = "";
    const slot = box.id.slice(4);
    for (const field of document.querySelectorAll(`[data-error="${slot}"]`)) field.removeAttribute("aria-invalid");
  }
}

function pageError(message) {
  const box = $("#err-page");
  box.textContent = message;
  box.hidden = !message;
}

// ---------------------------------------------------------------------- models and their options

function currentModel() {
  const id = $("#model").value;
  return page.config.models.find((m) => m.id === id) || page.config.models[0];
}

function renderModels() {
  const select = $("#model");
  select.replaceChildren();
  for (const model of page.config.models) {
    const family = model.family === "dia2" ? "Dia2" : "Dia-1.6B";
    const state = model.state === "loaded" ? "" : ` (${model.state === "unloaded" ? "loads on first use" : model.state})`;
    select.append(new Option(`${model.id} · ${family}${state}`, model.id, false, model.default));
  }
}

function rangeText(option) {
  return option.min_exclusive ? `above ${option.min}, at most ${option.max}` : `${option.min} to ${option.max}`;
}

function renderOptions() {
  const model = currentModel();
  const box = $("#options");
  box.replaceChildren();
  for (const option of model.options) {
    const id = `opt-${option.name}`;
    const field = document.createElement("div");
    field.className = "field option";
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = option.label;
    const input = document.createElement("input");
    Object.assign(input, {
      id, type: "number", step: String(option.step), min: String(option.min), max: String(option.max),
      inputMode: option.integer ? "numeric" : "decimal", autocomplete: "off",
    });
    input.dataset.name = option.name;
    input.dataset.error = option.name;
    input.value = option.default === null ? "" : String(option.default);
    input.placeholder = option.default === null ? option.default_text || "model default" : String(option.default);
    input.setAttribute("aria-describedby", `hint-${option.name} err-${option.name}`);
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.id = `hint-${option.name}`;
    const fallback = option.default === null ? option.default_text : option.default;
    hint.textContent = `${option.help} Range: ${rangeText(option)}; default ${fallback}.`;
    const error = document.createElement("p");
    error.className = "field-error";
    error.id = `err-${option.name}`;
    error.setAttribute("role", "alert");
    error.hidden = true;
    field.append(label, input, hint, error);
    box.append(field);
  }
}

function renderSounds() {
  const model = currentModel();
  const select = $("#sound");
  select.replaceChildren(new Option("Insert a sound…", ""));
  for (const sound of model.sounds) select.append(new Option(`(${sound})`, `(${sound}) `));
  if (model.pauses) select.append(new Option("a 1 s pause", '<break time="1s"/> '));
}

function resetOptions() {
  renderOptions();
  $("#speed").value = String(page.config.speed.default);
  updateSpeed();
  clearErrors();
}

function updateSpeed() {
  $("#speed-value").textContent = `${Number($("#speed").value).toFixed(2)}×`;
}

// ---------------------------------------------------------------------- voices

async function loadVoices() {
  try {
    const response = await call("/v1/voices");
    page.voices = (await response.json()).voices;
    clearErrors("voices");
  } catch (error) {
    page.voices = page.config.builtin_voices.map((id) => ({ id, name: id, builtin: true }));
    showError(error, "voices");
  }
  renderVoices();
}

function renderVoices() {
  const model = currentModel();
  for (const speaker of ["S1", "S2"]) {
    const select = $(`#voice-${speaker}`);
    const chosen = select.value;
    select.replaceChildren(new Option("Any voice (the seed decides)", ""));
    const stored = page.voices.filter((v) => !v.builtin);
    const builtin = page.voices.filter((v) => v.builtin);
    if (stored.length) {
      const group = document.createElement("optgroup");
      group.label = "Your voices";
      for (const v of stored) group.append(new Option(`${v.name} (${v.duration.toFixed(1)} s)`, v.id));
      select.append(group);
    }
    if (builtin.length && speaker === "S1") {
      // A built-in name stands for a seed: it means something for the first speaker only.
      const group = document.createElement("optgroup");
      group.label = "Built-in (a fixed seed)";
      for (const v of builtin) group.append(new Option(v.name, v.id));
      select.append(group);
    }
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
    select.disabled = !model.voices;
  }
  $("#voices-note").textContent = model.voices
    ? "A stored voice is a clip the model continues; its transcript counts towards the script's length."
    : "This model takes no voices over HTTP yet: the seed decides how the speakers sound.";
  updateLength();
}

function chosenVoices() {
  if (!currentModel().voices) return null;
  const voices = {};
  for (const speaker of ["S1", "S2"]) {
    const value = $(`#voice-${speaker}`).value;
    if (value) voices[speaker] = value;
  }
  return Object.keys(voices).length ? voices : null;
}

// ---------------------------------------------------------------------- the script and its length

function insertAtCursor(text) {
  const area = $("#script");
  const start = area.selectionStart;
  const end = area.selectionEnd;
  const before = area.value.slice(0, start);
  const spaced = before && !/\s$/.test(before) ? ` ${text}` : text;
  area.setRangeText(spaced, start, end, "end");
  area.focus();
  scriptChanged();
}

function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

// The server's count (README, Limits): Dia-1.6B reads UTF-8 bytes with [S1]/[S2] as one byte each, the
// stored voices' transcripts included; Dia2's limit is checked by the server, the page counts characters.
function scriptLength(model) {
  const text = $("#script").value.trim();
  if (model.script_limit.unit !== "bytes") return text.length;
  const tags = (text.match(/\[S[12]\]/g) || []).length;
  let bytes = utf8Length(text) - 3 * tags;
  if (text && !/^\[S[12]\]/.test(text) && bytes + 2 <= model.script_limit.max) bytes += 2;  // the [S1] put in front
  const voices = chosenVoices() || {};
  for (const [speaker, id] of Object.entries(voices)) {
    const voice = page.voices.find((v) => v.id === id && !v.builtin);
    if (voice && voice.transcript) bytes += utf8Length(`[${speaker}] ${voice.transcript} `) - 3;
  }
  return bytes;
}

function updateLength() {
  if (!page.config) return;
  const model = currentModel();
  const limit = model.script_limit;
  const used = scriptLength(model);
  const row = $(".meter-row");
  const meter = $("#script-meter");
  meter.max = limit.max;
  meter.value = Math.min(used, limit.max);
  meter.high = limit.max * 0.9;
  let text = `${used} / ${limit.max} ${limit.unit}`;
  if (limit.seconds) text += ` (and at most ${limit.seconds} s of speech)`;
  let over = used > limit.max;
  if (over) {
    text = `${used} ${limit.unit}: over this model's limit of ${limit.max}. ` +
      (model.long_form ? "Long scripts are split into chunks." : "Shorten it, or split it into several generations.");
  }
  const characters = $("#script").value.length;
  if (characters > page.config.max_input_chars) {
    over = true;
    text = `${characters} characters: over the ${page.config.max_input_chars} a request takes. Shorten it.`;
  } else if (model.long_form) {
    over = false;
  }
  row.classList.toggle("over", over);
  $("#script-length").textContent = text;
}

function scriptChanged() {
  updateLength();
  clearErrors("input");
  try { localStorage.setItem(DRAFT_STORAGE, $("#script").value); } catch (_) { /* private mode */ }
}

// ---------------------------------------------------------------------- the request

function requestFields() {
  const model = currentModel();
  const fields = { model: model.id, input: $("#script").value };
  for (const input of document.querySelectorAll("#options input")) {
    if (input.validity.badInput) throw new PageError("Enter a number, or leave it empty for the default.", input.dataset.name);
    if (input.value.trim() === "") continue;
    fields[input.dataset.name] = Number(input.value);
  }
  const speed = Number($("#speed").value);
  if (speed !== 1) fields.speed = speed;
  const voices = chosenVoices();
  if (voices) fields.voices = voices;
  const seed = $("#seed").value.trim();
  if (seed && !/^\d{1,20}$/.test(seed)) {
    throw new PageError("A seed is a whole number from 0 to 18446744073709551615; leave it empty for a random one.", "seed");
  }
  return { fields, seed: seed || null };
}

// Seeds go up to 2**64 - 1, beyond what a JavaScript number holds exactly: they are written as digits.
function requestBody(fields, seed, extra) {
  const json = JSON.stringify({ ...fields, ...extra });
  return seed === null ? json : `${json.slice(0, -1)},"seed":${seed}}`;
}

// ---------------------------------------------------------------------- playing while it streams

class StreamPlayer {
  constructor(context) {
    this.context = context;
    this.next = 0;
    this.sources = new Set();
    this.spans = [];  // [context time, audio time, seconds] of each scheduled piece
    this.queued = 0;
  }

  push(samples) {
    const ctx = this.context;
    const buffer = ctx.createBuffer(1, samples.length, PCM_RATE);
    buffer.copyToChannel(samples, 0);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    // A small lead absorbs jitter; after a stall, playback resumes with the same lead.
    if (this.next < ctx.currentTime + 0.02) this.next = ctx.currentTime + 0.12;
    source.start(this.next);
    this.spans.push([this.next, this.queued, buffer.duration]);
    this.sources.add(source);
    source.onended = () => this.sources.delete(source);
    this.next += buffer.duration;
    this.queued += buffer.duration;
  }

  // Seconds of the result being heard now, or null before the first piece and after the last.
  position() {
    const now = this.context.currentTime;
    for (const [at, audio, seconds] of this.spans) {
      if (now >= at && now < at + seconds) return audio + (now - at);
    }
    return null;
  }

  get playing() {
    return this.sources.size > 0;
  }

  stop() {
    for (const source of this.sources) {
      try { source.stop(); } catch (_) { /* not started */ }
    }
    this.sources.clear();
  }
}

async function audioContext() {
  if (!page.audio) page.audio = new AudioContext({ sampleRate: PCM_RATE });
  if (page.audio.state === "suspended") await page.audio.resume();
  return page.audio;
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// ---------------------------------------------------------------------- generating

async function generate() {
  if (page.run) return;
  clearErrors();
  pageError("");
  let request;
  try {
    request = requestFields();
  } catch (error) {
    showError(error);
    return;
  }
  if (!request.fields.input.trim()) {
    showError(new PageError("Write a script first, for example: [S1] Hello there! [S2] Hi.", "input"));
    return;
  }
  let context = null;
  try {
    context = await audioContext();
  } catch (_) { /* no audio output: the result is still shown */ }

  const model = currentModel();
  const run = {
    controller: new AbortController(), chunks: [], samples: 0, peak: 0, drawn: 0, carry: null, words: [], seed: null,
    started: performance.now(), player: context ? new StreamPlayer(context) : null, stopped: false,
    request, model, frame: 0,
  };
  page.run = run;
  setRunning(true);
  progress(model.state === "loaded" ? "Waiting for the model…" : "Loading the model (first use), then generating…");
  showResult(null);
  $("#result").hidden = false;  // the waveform and the words grow while the audio streams
  $("#words").replaceChildren();
  $("#words").hidden = !model.words;
  animate(run);

  try {
    const response = await call("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: requestBody(request.fields, request.seed, { response_format: "pcm", stream_format: "sse" }),
      signal: run.controller.signal,
    });
    run.seed = response.headers.get("X-Seed");
    await readEvents(response, run);
    finish(run, run.stopped ? "stopped" : "done");
  } catch (error) {
    if (error.name === "AbortError") {
      finish(run, "stopped");
    } else {
      finish(run, "failed");
      showError(error);
    }
  }
}

async function readEvents(response, run) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) handleEvent(JSON.parse(data), run);
    }
  }
}

function handleEvent(event, run) {
  if (event.type === "speech.audio.delta") {
    let bytes = base64Bytes(event.audio);
    if (run.carry !== null) {  // a sample split across two deltas
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = run.carry;
      joined.set(bytes, 1);
      bytes = joined;
      run.carry = null;
    }
    if (bytes.length % 2) {
      run.carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    if (!bytes.length) return;
    const pcm = new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    run.chunks.push(pcm);
    run.samples += pcm.length;
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) {
      samples[i] = pcm[i] / 32768;
      run.peak = Math.max(run.peak, Math.abs(pcm[i]));
    }
    if (run.player) run.player.push(samples);
    const seconds = run.samples / PCM_RATE;
    const wall = (performance.now() - run.started) / 1000;
    progress(`${seconds.toFixed(1)} s of audio · ${(seconds / wall).toFixed(2)}× real time`);
    if (performance.now() - run.drawn > 200) {  // each drawing reads every sample so far: a few per second
      drawWaveform(run, null);
      run.drawn = performance.now();
    }
  } else if (event.type === "speech.word") {
    run.words.push({ word: event.word, start: event.start });
    appendWord(event.word, event.start);
  } else if (event.type === "speech.audio.error") {
    throw new PageError(event.error.message, event.error.param, event.error.code);
  }
}

function stop() {
  if (!page.run) return;
  page.run.stopped = true;
  page.run.controller.abort();
  if (page.run.player) page.run.player.stop();
}

function finish(run, outcome) {
  page.run = null;
  setRunning(false);
  const seconds = run.samples / PCM_RATE;
  const wall = (performance.now() - run.started) / 1000;
  if (outcome === "failed") {
    progress("");
    if (run.player) run.player.stop();
    showResult(null);
    return;
  }
  if (!run.samples) {
    showResult(null);
    progress(outcome === "stopped" ? "Stopped before any audio." : "The model made no audio for this script.");
    return;
  }
  const result = {
    n: page.history.length + 1, seed: run.seed, model: run.model.id, fields: run.request.fields,
    duration: seconds, words: run.words, url: URL.createObjectURL(wavBlob(run.chunks, run.samples)),
    chunks: run.chunks, samples: run.samples, peak: run.peak, format: $("#format").value, complete: outcome === "done",
  };
  showResult(result);
  if (outcome === "done") {
    progress(`Done: ${seconds.toFixed(1)} s of audio in ${wall.toFixed(1)} s (${(seconds / wall).toFixed(2)}× real time).`);
    page.last = result;
    $("#seed-reuse").disabled = false;
    addHistory(result);
  } else {
    progress(`Stopped after ${seconds.toFixed(1)} s of audio.`);
  }
}

function setRunning(running) {
  $("#generate").disabled = running;
  $("#stop").disabled = !running;
  $("#progress-bar").hidden = !running;
  $("#generate").textContent = running ? "Generating…" : "Generate";
  if (!running && document.activeElement === $("#stop")) $("#generate").focus();
}

function progress(text) {
  $("#progress").textContent = text;
}

// While streaming, the live position drives the word highlight; afterwards the <audio> element does.
function animate(run) {
  const tick = () => {
    if (page.run !== run && !(run.player && run.player.playing)) {
      highlightWord(null);
      return;
    }
    if (run.player) highlightWord(run.player.position());
    run.frame = requestAnimationFrame(tick);
  };
  run.frame = requestAnimationFrame(tick);
}

// ---------------------------------------------------------------------- the result

function wavBlob(chunks, samples) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, value) => { for (let i = 0; i < value.length; i++) header.setUint8(offset + i, value.charCodeAt(i)); };
  text(0, "RIFF");
  header.setUint32(4, 36 + samples * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true);          // PCM
  header.setUint16(22, 1, true);          // mono
  header.setUint32(24, PCM_RATE, true);
  header.setUint32(28, PCM_RATE * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, samples * 2, true);
  return new Blob([header, ...chunks], { type: "audio/wav" });
}

function showResult(result) {
  const box = $("#result");
  const audio = $("#result-audio");
  box.hidden = !result;
  page.shown = result;
  if (!result) {
    audio.removeAttribute("src");
    audio.load();
    $("#result-info").textContent = "";
    $("#download").disabled = true;
    return;
  }
  audio.src = result.url;
  const settings = describeFields(result.fields);
  $("#result-info").textContent = `Seed ${result.seed} · ${result.duration.toFixed(2)} s` +
    (settings ? ` · ${settings}` : "") + (result.complete ? "" : " · stopped early");
  $("#download").textContent = `Download ${result.complete ? result.format.toUpperCase() : "WAV"}`;
  $("#download").disabled = false;
  drawWaveform(result, null);
  if (result.words.length) {
    $("#words").replaceChildren();
    for (const w of result.words) appendWord(w.word, w.start);
    $("#words").hidden = false;
  }
}

function describeFields(fields) {
  const skip = new Set(["model", "input", "voices"]);
  const parts = Object.entries(fields).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k} ${v}`);
  if (fields.voices) parts.push(`voices ${Object.entries(fields.voices).map(([s, v]) => `${s}=${v}`).join(", ")}`);
  return parts.join(" · ");
}

function appendWord(word, start) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = word;
  button.dataset.start = String(start);
  button.title = `${start.toFixed(2)} s`;
  $("#words").append(button, " ");
}

function highlightWord(seconds) {
  let current = null;
  for (const button of $("#words").querySelectorAll("button")) {
    const start = Number(button.dataset.start);
    const said = seconds !== null && start <= seconds;
    button.classList.toggle("said", said);
    if (said) current = button;
  }
  for (const button of $("#words").querySelectorAll("button.now")) button.classList.remove("now");
  if (current) {
    current.classList.remove("said");
    current.classList.add("now");
  }
}

// The lowest and highest sample of each of ``width`` columns over ``total`` samples, relative to the loudest
// sample (so quiet speech still shows its shape; silence stays flat).
function columns({ chunks, samples, peak }, width, total) {
  const scale = Math.max(peak, 0.02 * 32768);
  const bounds = new Float32Array(2 * width);
  const perColumn = total / width;
  let chunk = 0;
  let offset = 0;
  let index = 0;
  for (let x = 0; x < width && index < samples; x++) {
    const end = Math.min(samples, Math.max(index + 1, Math.round((x + 1) * perColumn)));
    let low = 0;
    let high = 0;
    for (; index < end; index++) {
      while (index - offset >= chunks[chunk].length) offset += chunks[chunk++].length;
      const v = chunks[chunk][index - offset] / scale;
      if (v < low) low = v;
      if (v > high) high = v;
    }
    bounds[2 * x] = low;
    bounds[2 * x + 1] = high;
  }
  return bounds;
}

function drawWaveform(audio, playedSeconds) {
  const canvas = $("#waveform");
  const width = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
  const height = Math.round(96 * devicePixelRatio);
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  if (!audio.samples) return;
  // While streaming the drawing grows to the right; a finished result fills the width (and is measured once).
  const streaming = page.run === audio;
  const total = streaming ? Math.max(audio.samples, PCM_RATE * 10) : audio.samples;
  if (streaming || !audio.columns || audio.columns.length !== 2 * width) audio.columns = columns(audio, width, total);
  const style = getComputedStyle(document.documentElement);
  const wave = style.getPropertyValue("--wave").trim();
  const accent = style.getPropertyValue("--accent").trim();
  const playedColumn = playedSeconds === null ? -1 : (playedSeconds * PCM_RATE * width) / total;
  const middle = height / 2;
  for (let x = 0; x < width; x++) {
    const low = audio.columns[2 * x];
    const high = audio.columns[2 * x + 1];
    ctx.fillStyle = x <= playedColumn ? accent : wave;
    ctx.fillRect(x, middle - high * middle, 1, Math.max(1, (high - low) * middle));
  }
}

async function download(result) {
  const format = result.complete ? result.format : "wav";
  const name = `dia-${result.seed}.${EXTENSIONS[format]}`;
  if (format === "wav") {
    save(result.url, name);
    return;
  }
  const status = $("#progress");
  status.textContent = `Making the ${format.toUpperCase()} file from seed ${result.seed}…`;
  try {
    const response = await call("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: requestBody(result.fields, result.seed, { response_format: format, stream: false }),
    });
    const url = URL.createObjectURL(await response.blob());
    save(url, name);
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    status.textContent = `Saved ${name}.`;
  } catch (error) {
    status.textContent = "";
    showError(error);
  }
}

function save(url, name) {
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
}

// ---------------------------------------------------------------------- history

function addHistory(result) {
  page.history.push(result);
  $("#history-empty").hidden = true;
  const item = document.createElement("li");
  item.className = "entry";
  const title = document.createElement("h3");
  title.textContent = `#${result.n} · ${result.model} · seed ${result.seed} · ${result.duration.toFixed(1)} s`;
  const script = document.createElement("p");
  script.className = "script";
  script.textContent = result.fields.input;
  const settings = document.createElement("p");
  settings.className = "hint";
  settings.textContent = describeFields(result.fields) || "the model's defaults";
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "metadata";
  audio.src = result.url;
  audio.setAttribute("aria-label", `Result ${result.n}`);
  const actions = document.createElement("div");
  actions.className = "row";
  const button = (label, handler) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", handler);
    actions.append(b);
    return b;
  };
  button(`Download ${result.format.toUpperCase()}`, () => download(result)).setAttribute(
    "aria-label", `Download result ${result.n} as ${result.format.toUpperCase()}`);
  button("Show", () => { restore(result); showResult(result); }).setAttribute("aria-label", `Show result ${result.n}`);
  button("Re-run", () => { restore(result); generate(); }).setAttribute(
    "aria-label", `Run result ${result.n} again with its script, settings and seed`);
  item.append(title, script, settings, audio, actions);
  $("#history").prepend(item);
}

// Puts a result's script, model, settings and seed back into the form.
function restore(result) {
  const fields = result.fields;
  $("#model").value = fields.model;
  modelChanged();
  $("#script").value = fields.input;
  for (const input of document.querySelectorAll("#options input")) {
    input.value = fields[input.dataset.name] === undefined ? "" : String(fields[input.dataset.name]);
  }
  $("#speed").value = String(fields.speed || 1);
  updateSpeed();
  for (const speaker of ["S1", "S2"]) {
    $(`#voice-${speaker}`).value = (fields.voices && fields.voices[speaker]) || "";
  }
  $("#seed").value = result.seed;
  $("#format").value = result.format;
  scriptChanged();
}

// ---------------------------------------------------------------------- adding a voice

function setClip(file, label) {
  page.clip = file;
  const preview = $("#voice-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("#voice-clip-status").textContent = label;
  clearErrors("voice-file");
  if (!$("#voice-name").value.trim() && file.name) {
    $("#voice-name").value = file.name.replace(/\.[^.]+$/, "").replace(/[^\w -]+/g, " ").trim().slice(0, 64);
  }
  transcribe(file);
}

async function transcribe(file) {
  const hint = $("#voice-transcript-hint");
  const area = $("#voice-transcript");
  if (!page.config.speech_recognition) {
    hint.textContent = "Speech recognition is not installed on the server: type what the clip says.";
    return;
  }
  hint.textContent = "Transcribing the clip…";
  const form = new FormData();
  form.append("file", file, file.name || "clip.webm");
  form.append("model", "whisper-1");
  try {
    const response = await call("/v1/audio/transcriptions", { method: "POST", body: form });
    const text = (await response.json()).text.trim();
    if (page.clip !== file) return;  // another clip was chosen meanwhile
    if (!area.value.trim() || area.value === page.clipAutoText) {
      area.value = text;
      page.clipAutoText = text;
    }
    hint.textContent = text ? "Filled in by speech recognition: correct it if needed."
      : "No words were recognized: type what the clip says.";
  } catch (error) {
    if (error.code === "invalid_api_key") {
      showError(error);
      hint.textContent = "";
      return;
    }
    hint.textContent = `Speech recognition did not work (${error.message}) Type what the clip says.`;
  }
}

async function toggleRecording() {
  const button = $("#voice-record");
  if (page.recorder) {
    page.recorder.stop();
    return;
  }
  clearErrors("voice-file");
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError(new PageError("This browser cannot record here: recording needs https or localhost. Upload a file instead.",
      "voice-file"));
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(new PageError(`The microphone is not available (${error.message}).`, "voice-file"));
    return;
  }
  const recorder = new MediaRecorder(stream);
  const parts = [];
  const started = performance.now();
  page.recorder = recorder;
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
  const timer = setInterval(() => {
    const seconds = (performance.now() - started) / 1000;
    $("#voice-clip-status").textContent = `Recording… ${seconds.toFixed(0)} s (at most ${MAX_RECORD_SECONDS})`;
    if (seconds >= MAX_RECORD_SECONDS && recorder.state === "recording") recorder.stop();
  }, 250);
  recorder.ondataavailable = (event) => parts.push(event.data);
  recorder.onstop = () => {
    clearInterval(timer);
    for (const track of stream.getTracks()) track.stop();
    page.recorder = null;
    button.textContent = "Record";
    button.setAttribute("aria-pressed", "false");
    const type = recorder.mimeType || "audio/webm";
    const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    const seconds = (performance.now() - started) / 1000;
    setClip(new File(parts, `recording.${extension}`, { type }), `Recorded ${seconds.toFixed(1)} s.`);
  };
  recorder.start();
}

async function saveVoice(event) {
  event.preventDefault();
  clearErrors("voice-name", "voice-file", "voice-transcript");
  $("#voice-saved").textContent = "";
  const name = $("#voice-name").value.trim();
  if (!name) {
    showError(new PageError("Give the voice a name.", "voice-name"));
    return;
  }
  if (!page.clip) {
    showError(new PageError("Choose or record a clip first.", "voice-file"));
    return;
  }
  const form = new FormData();
  form.append("name", name);
  form.append("audio", page.clip, page.clip.name || "clip.webm");
  const transcript = $("#voice-transcript").value.trim();
  if (transcript) form.append("transcript", transcript);
  const button = $("#voice-save");
  button.disabled = true;
  try {
    const response = await call("/v1/voices", { method: "POST", body: form });
    const voice = await response.json();
    await loadVoices();
    const speaker = $("#voice-for").value;
    if (!$(`#voice-${speaker}`).disabled) $(`#voice-${speaker}`).value = voice.id;
    updateLength();
    $("#voice-saved").textContent = `Saved “${voice.name}” (${voice.duration.toFixed(1)} s)` +
      (currentModel().voices ? ` and chose it for [${speaker}].` : ".");
    $("#voice-form").reset();
    $("#voice-preview").hidden = true;
    $("#voice-clip-status").textContent = "No clip yet.";
    $("#voice-transcript-hint").textContent = "";
    page.clip = null;
    page.clipAutoText = "";
  } catch (error) {
    showError(error, "voice-file");
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------- start

function modelChanged() {
  clearErrors();
  renderOptions();
  renderSounds();
  renderVoices();
}

function wire() {
  $("#model").addEventListener("change", modelChanged);
  $("#script").addEventListener("input", scriptChanged);
  $("#script").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      generate();
    }
  });
  for (const button of document.querySelectorAll("[data-insert]")) {
    button.addEventListener("click", () => insertAtCursor(button.dataset.insert));
  }
  $("#sound").addEventListener("change", (event) => {
    if (event.target.value) insertAtCursor(event.target.value);
    event.target.value = "";
  });
  const examples = $("#example");
  EXAMPLES.forEach(([title], i) => examples.append(new Option(title, String(i))));
  examples.addEventListener("change", () => {
    if (examples.value !== "") {
      $("#script").value = EXAMPLES[Number(examples.value)][1];
      scriptChanged();
      $("#script").focus();
    }
    examples.value = "";
  });
  for (const speaker of ["S1", "S2"]) {
    $(`#voice-${speaker}`).addEventListener("change", () => { clearErrors("voices"); updateLength(); });
  }
  $("#options").addEventListener("input", (event) => clearErrors(event.target.dataset.error));
  $("#seed").addEventListener("input", () => clearErrors("seed"));
  $("#seed-random").addEventListener("click", () => { $("#seed").value = ""; clearErrors("seed"); });
  $("#seed-reuse").addEventListener("click", () => {
    if (page.last) $("#seed").value = page.last.seed;
    clearErrors("seed");
  });
  $("#speed").addEventListener("input", () => { updateSpeed(); clearErrors("speed"); });
  $("#reset-options").addEventListener("click", resetOptions);
  $("#generate").addEventListener("click", generate);
  $("#stop").addEventListener("click", stop);
  $("#download").addEventListener("click", () => page.shown && download(page.shown));
  $("#api-key").addEventListener("change", () => {
    const key = apiKey();
    try {
      if (key) localStorage.setItem(KEY_STORAGE, key); else localStorage.removeItem(KEY_STORAGE);
    } catch (_) { /* private mode: the key lasts for this visit */ }
    clearErrors("key");
    loadVoices();
  });
  $("#voice-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) setClip(file, `${file.name}, ${(file.size / 1024).toFixed(0)} KiB.`);
  });
  $("#voice-record").addEventListener("click", toggleRecording);
  $("#voice-form").addEventListener("submit", saveVoice);
  $("#voice-transcript").addEventListener("input", () => clearErrors("voice-transcript"));
  $("#voice-name").addEventListener("input", () => clearErrors("voice-name"));

  const audio = $("#result-audio");
  const follow = () => {
    const result = page.shown;
    if (!result || page.run) return;
    drawWaveform(result, audio.currentTime);
    highlightWord(audio.paused && audio.currentTime === 0 ? null : audio.currentTime);
    if (!audio.paused) requestAnimationFrame(follow);
  };
  audio.addEventListener("play", follow);
  audio.addEventListener("seeked", follow);
  audio.addEventListener("pause", follow);
  $("#waveform").addEventListener("click", (event) => {
    const result = page.shown;
    if (!result || page.run || !Number.isFinite(audio.duration)) return;
    const box = event.currentTarget.getBoundingClientRect();
    audio.currentTime = ((event.clientX - box.left) / box.width) * audio.duration;
  });
  $("#words").addEventListener("click", (event) => {
    const start = event.target.dataset && event.target.dataset.start;
    if (start === undefined || page.run) return;
    audio.currentTime = Number(start);
    audio.play().catch(() => {});
  });
  window.addEventListener("resize", () => {
    if (page.shown && !page.run) drawWaveform(page.shown, audio.currentTime);
  });
}

async function start() {
  try {
    $("#api-key").value = localStorage.getItem(KEY_STORAGE) || "";
    $("#script").value = localStorage.getItem(DRAFT_STORAGE) || "";
  } catch (_) { /* storage may be unavailable */ }
  wire();
  try {
    const response = await call("/ui/config");
    page.config = await response.json();
  } catch (error) {
    pageError(`The page cannot start: ${error.message}`);
    return;
  }
  const format = $("#format");
  for (const name of page.config.formats) format.append(new Option(name.toUpperCase(), name));
  const speed = $("#speed");
  speed.min = String(page.config.speed.min);
  speed.max = String(page.config.speed.max);
  renderModels();
  modelChanged();
  updateSpeed();
  await loadVoices();
  document.body.dataset.ready = "true";
}

start();
