// The page at /ui: two drawing pads (pointer events, so mouse, pen and touch alike), a picture chosen or
// dropped for either side, a random sample course pair, and the service's answer drawn from its JSON.
// No dependencies and no build step; every URL is relative to the page, so nothing leaves its origin.

const SIDES = ["left", "right"];
// The pads draw on a 280x280 bitmap whatever their size on screen. The service crops to the ink and fits it
// into MNIST's 20x20 box, so a 22-px stroke on a digit about 200 px tall becomes MNIST's 2-px stroke.
const INK_WIDTH = 22;
const PAPER = "#ffffff";
const INK = "#111111";
const NO_PREVIEW = "#eef0f3";

// The sentence under the answer: which prior over digit pairs produced it (the service names it in "prior").
const PRIOR_SENTENCES = {
  uniform: "This answer treats the two digits as any pair of different digits, all equally likely (uniform prior).",
  course: "This answer expects a pair like the course's, where most pairs are neighbours such as 7 and 6 " +
    "(course prior).",
};

const $ = (id) => document.getElementById(id);
const percent = (p) => `${(100 * p).toFixed(1)}%`;

class ServiceError extends Error {}

class Pad {
  constructor(side, onChange) {
    this.side = side;
    this.onChange = onChange;
    this.canvas = $(`canvas-${side}`);
    this.ctx = this.canvas.getContext("2d");
    this.sourceText = $(`source-${side}`);
    this.picture = null; // {blob, name}: a chosen or dropped file, or a sample half; sent exactly as it is
    this.stroke = null; // {id, x, y} while a pointer draws
    this.clear();

    this.canvas.addEventListener("pointerdown", (e) => this.down(e));
    this.canvas.addEventListener("pointermove", (e) => this.move(e));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      this.canvas.addEventListener(type, (e) => this.up(e));
    }
    $(`clear-${side}`).addEventListener("click", () => this.clear());
    const input = $(`file-${side}`);
    input.addEventListener("change", () => {
      if (input.files.length) this.showPicture(input.files[0], input.files[0].name, `Picture: ${input.files[0].name}`);
      input.value = ""; // choosing the same file again must still count as a change
    });
    const surface = this.canvas.parentElement;
    surface.addEventListener("dragover", (e) => {
      e.preventDefault();
      surface.classList.add("dropping");
    });
    surface.addEventListener("dragleave", () => surface.classList.remove("dropping"));
    surface.addEventListener("drop", (e) => {
      e.preventDefault();
      surface.classList.remove("dropping");
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) this.showPicture(file, file.name, `Picture: ${file.name}`);
    });
  }

  clear() {
    this.ctx.fillStyle = PAPER;
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.picture = null;
    this.stroke = null;
    this.setSource("Empty: draw a digit");
  }

  setSource(text) {
    // The caption is a live region: rewriting the same words on every stroke would announce them each time.
    if (this.sourceText.textContent !== text) this.sourceText.textContent = text;
    this.onChange(this.side);
  }

  point(e) {
    const r = this.canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * this.canvas.width / r.width, (e.clientY - r.top) * this.canvas.height / r.height];
  }

  down(e) {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    // A stroke starts a fresh drawing: ink on top of a photo or a course half would send a mix of both.
    if (this.picture) this.clear();
    this.canvas.setPointerCapture(e.pointerId);
    const [x, y] = this.point(e);
    this.stroke = { id: e.pointerId, x, y };
    this.line(x, y, x, y); // a tap leaves a dot
    this.setSource(`Your drawing (${e.pointerType || "pointer"})`);
  }

  move(e) {
    if (!this.stroke || e.pointerId !== this.stroke.id) return;
    e.preventDefault();
    // Fast strokes arrive as one event per frame; the coalesced ones keep their curve.
    const events = (e.getCoalescedEvents && e.getCoalescedEvents()) || [];
    for (const event of events.length ? events : [e]) {
      const [x, y] = this.point(event);
      this.line(this.stroke.x, this.stroke.y, x, y);
      this.stroke.x = x;
      this.stroke.y = y;
    }
  }

  up(e) {
    if (this.stroke && e.pointerId === this.stroke.id) this.stroke = null;
  }

  line(x0, y0, x1, y1) {
    const ctx = this.ctx;
    ctx.strokeStyle = INK;
    ctx.lineWidth = INK_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.stroke();
  }

  async showPicture(blob, name, description) {
    const { width, height } = this.canvas;
    this.picture = { blob, name };
    this.stroke = null;
    this.ctx.fillStyle = NO_PREVIEW;
    this.ctx.fillRect(0, 0, width, height);
    try {
      const bitmap = await createImageBitmap(blob);
      const scale = Math.min(width / bitmap.width, height / bitmap.height);
      const w = bitmap.width * scale;
      const h = bitmap.height * scale;
      this.ctx.imageSmoothingEnabled = bitmap.width > 64; // small course digits stay crisp pixels
      this.ctx.drawImage(bitmap, (width - w) / 2, (height - h) / 2, w, h);
      this.ctx.imageSmoothingEnabled = true;
      bitmap.close();
      this.setSource(description);
    } catch {
      // The browser cannot show it; the service still gets it, and says in words what is wrong with it.
      this.ctx.fillStyle = "#5f6368";
      this.ctx.font = "18px system-ui, sans-serif";
      this.ctx.textAlign = "center";
      this.ctx.fillText("No preview for this file", width / 2, height / 2);
      this.setSource(`${description} (no preview)`);
    }
  }

  /** [blob, file name] to upload: the picture as it came, or the drawing as PNG. */
  async upload() {
    if (this.picture) return [this.picture.blob, this.picture.name];
    const blob = await new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
    return [blob, `${this.side}.png`];
  }
}

// --------------------------------------------------------------------------- the page

const result = $("result");
const buttons = [$("compare"), $("sample")];
let modelNames = null; // /info's order, so the chart always lists the models the same way
let samples = null;
let lastSample = -1;
let busy = false;
let loadingSample = false;
let lastRequest = null; // () => Promise: the last comparison, sent again when the prior is switched

function padChanged() {
  if (!loadingSample) $("sample-info").hidden = true; // the pads no longer hold that pair
}

const pads = Object.fromEntries(SIDES.map((side) => [side, new Pad(side, padChanged)]));

function setState(state, message) {
  result.dataset.state = state;
  result.setAttribute("aria-busy", String(state === "busy"));
  $("status").textContent = message;
}

function showError(message) {
  $("answer").hidden = true;
  $("versus").textContent = "?";
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  setState("error", "No answer this time.");
}

function describeError(status, body, statusText) {
  const said = body && typeof body.error === "string" ? body.error : statusText || "no explanation given";
  const lead = {
    400: "The service could not use the input",
    408: "The upload took too long",
    413: "The input is too large",
    415: "The service did not accept the request",
    503: "The service is busy; try again in a moment",
  }[status] || `The service answered with an error (HTTP ${status})`;
  return `${lead}: ${said}`;
}

/** The prior to send: the one chosen, or (automatic) `natural`, what the pictures are. */
function chosenPrior(natural) {
  const choice = $("prior").value;
  return choice === "uniform" || choice === "course" ? choice : natural;
}

async function post(route, form, description) {
  if (busy) return;
  busy = true;
  buttons.forEach((b) => { b.disabled = true; });
  $("error").hidden = true;
  setState("busy", `Asking the service (/${route})…`);
  form.append("include_inputs", "true");
  const started = performance.now();
  try {
    let response;
    try {
      response = await fetch(route, { method: "POST", body: form });
    } catch (err) {
      throw new ServiceError(`The service could not be reached (${err.message}). Is it still running?`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    const ms = performance.now() - started;
    if (!response.ok) throw new ServiceError(describeError(response.status, body, response.statusText));
    if (!body || typeof body.probability !== "number" || !body.models) {
      throw new ServiceError("The service answered something this page does not understand.");
    }
    showAnswer(body, route, ms, description);
  } catch (err) {
    showError(err instanceof ServiceError ? err.message : `Something went wrong on this page: ${err.message}`);
  } finally {
    busy = false;
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function showDigit(side, answer) {
  const digit = answer.digits[side];
  const probs = (answer.digit_probabilities && answer.digit_probabilities[side]) || null;
  $(`digit-${side}`).textContent = String(digit);
  $(`digit-${side}-prob`).textContent = probs ? percent(probs[digit]) : "–";
  const dist = $(`dist-${side}`);
  dist.replaceChildren();
  if (probs) {
    probs.forEach((p, d) => {
      const column = document.createElement("span");
      column.className = d === digit ? "col read" : "col";
      column.title = `${d}: ${percent(p)}`;
      const bar = document.createElement("span");
      bar.className = "col-bar";
      bar.style.height = `${Math.max(100 * p, 1)}%`;
      const label = document.createElement("span");
      label.className = "col-label";
      label.textContent = String(d);
      column.append(bar, label);
      dist.append(column);
    });
    dist.setAttribute("aria-label", `${side} digit probabilities: ` +
      probs.map((p, d) => `${d} ${percent(p)}`).join(", "));
  }
  const image = $(`input-${side}`);
  if (answer.inputs && answer.inputs[side]) {
    image.src = `data:image/png;base64,${answer.inputs[side]}`;
    image.hidden = false;
  } else {
    image.removeAttribute("src");
    image.hidden = true;
  }
}

function showModels(models) {
  const names = [...(modelNames || []).filter((n) => n in models), ...Object.keys(models).filter(
    (n) => !(modelNames || []).includes(n))];
  const chart = $("models");
  chart.replaceChildren(...names.map((name) => {
    const p = models[name];
    const row = document.createElement("li");
    row.dataset.model = name;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    label.title = name; // the whole name, where a narrow screen cuts it short
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = p >= 0.5 ? "fill left-greater" : "fill right-greater";
    fill.style.width = percent(p);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    row.append(label, track, value);
    return row;
  }));
}

function showAnswer(answer, route, ms, description) {
  const verdict = answer.greater ? "left > right" : "left < right";
  $("verdict").textContent = verdict;
  $("versus").textContent = answer.greater ? ">" : "<";
  const bar = $("probability-bar");
  $("probability-fill").style.width = percent(answer.probability);
  bar.setAttribute("aria-valuenow", (100 * answer.probability).toFixed(1));
  bar.setAttribute("aria-valuetext", `${percent(answer.probability)} that left > right`);
  $("probability-text").textContent = percent(answer.probability);
  SIDES.forEach((side) => showDigit(side, answer));
  showModels(answer.models);
  const service = typeof answer.elapsed_ms === "number" ? ` (the service: ${Math.round(answer.elapsed_ms)} ms)` : "";
  $("prior-text").textContent = PRIOR_SENTENCES[answer.prior] || `Prior: ${answer.prior}.`;
  $("timing").textContent = `Answered in ${Math.round(ms)} ms${service} by /${route}, ` +
    `in an inference batch of ${answer.batch_size}.`;
  $("answer").hidden = false;
  setState("done", description);
}

// --------------------------------------------------------------------------- actions

async function compareDrawn() {
  if (busy) return;
  const form = new FormData();
  for (const side of SIDES) {
    const [blob, name] = await pads[side].upload();
    form.append(side, blob, name);
  }
  const sample = $("sample-info").hidden ? null : $("sample-info").dataset.sampleId;
  // Drawings and dropped pictures can be any pair; the two halves of a course pair are a course pair.
  form.append("prior", chosenPrior(sample ? "course" : "uniform"));
  lastRequest = compareDrawn;
  await post("compare", form, sample ? `The halves of course pair ${sample}, sent as two pictures to /compare.`
    : "Your two digits, sent as two pictures to /compare.");
}

function pngBlob(base64) {
  return new Blob([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], { type: "image/png" });
}

async function loadSample() {
  if (busy) return;
  if (!samples) {
    try {
      const response = await fetch("ui/samples.json");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      samples = (await response.json()).pairs;
    } catch (err) {
      showError(`The sample pairs could not be loaded (${err.message}).`);
      return;
    }
  }
  if (!samples.length) {
    showError("This service has no sample pairs (samples/ is not part of its build).");
    return;
  }
  let index = Math.floor(Math.random() * samples.length);
  if (samples.length > 1 && index === lastSample) index = (index + 1) % samples.length; // a new one each press
  lastSample = index;
  const sample = samples[index];
  const stem = sample.id.replace(/\.png$/, "");
  loadingSample = true;
  try {
    await Promise.all(SIDES.map((side) => pads[side].showPicture(
      pngBlob(sample[side]), `${stem}-${side}.png`, `${side === "left" ? "Left" : "Right"} half of ${sample.id}`)));
  } finally {
    loadingSample = false;
  }
  const picture = document.createElement("img");
  picture.className = "pair-image";
  picture.alt = `Course pair ${sample.id} as the course stores it (28×56)`;
  picture.src = `data:image/png;base64,${sample.pair}`;
  const strong = (id, text) => Object.assign(document.createElement("strong"), { id, textContent: text });
  const truth = sample.label === null || sample.label === undefined ? "not recorded"
    : (sample.label === 1 ? "left > right" : "left < right");
  const digits = Array.isArray(sample.digits) ? ` (${sample.digits[0]} and ${sample.digits[1]})` : "";
  const text = document.createElement("span");
  text.append("Course pair ", strong("sample-id", sample.id), ", held-out test digits; the truth: ",
    strong("sample-truth", truth + digits), ".");
  const info = $("sample-info");
  info.dataset.sampleId = sample.id;
  info.replaceChildren(picture, text);
  info.hidden = false;
  await postSample(sample);
}

async function postSample(sample) {
  const form = new FormData();
  form.append("image", pngBlob(sample.pair), `${sample.id.replace(/\.png$/, "")}.png`);
  form.append("prior", chosenPrior("course"));
  lastRequest = () => postSample(sample);
  await post("compare_pair", form, `Course pair ${sample.id}, sent whole (28×56) to /compare_pair. ` +
    "Press Compare to send its two halves as separate pictures to /compare.");
}

$("compare").addEventListener("click", compareDrawn);
// Switching the prior asks the same question again under it, so the two answers can be compared.
$("prior").addEventListener("change", () => {
  if (lastRequest && !busy && !$("answer").hidden) lastRequest();
});
$("sample").addEventListener("click", loadSample);
// A file dropped next to a pad must not make the browser leave the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

fetch("info").then((r) => (r.ok ? r.json() : null)).then((info) => {
  if (info && Array.isArray(info.models)) modelNames = info.models;
}).catch(() => { /* the chart then follows the answer's order */ });
