// The digit page: draw or upload, ask the service, show the answer, what the model saw and why.
// Plain browser JavaScript, no build step and nothing from a CDN; it only talks to this service:
// POST /predict_canvas and /predict_image (answer + the 28×28 "seen"), POST /explain, GET /model
// (the footer and the "About this model" panel), and the feedback loop: GET /feedback (is it on,
// below which confidence "Not sure" is offered), POST /feedback (the "Right?" row under an answer),
// GET /feedback/queue and POST /feedback/review (the "Help label" panel).
// With an API key set on the service, it asks for the key and sends it (Authorization: Bearer).
"use strict";

(() => {
  const LOW_CONFIDENCE = 0.6; // below this the answer is shown as "not sure"
  const BRUSH = 22; // px on the 280×280 pad: MNIST strokes are 2-3 px of 28
  const $ = (id) => document.getElementById(id);

  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const strokes = []; // each stroke a list of [x, y] in pad pixels, for Undo
  let current = null;
  let latest = 0; // number of the latest request: older replies are ignored

  // What the tests (and the curious, in the console) can read.
  // feedback: the service's settings (GET /feedback), the last stored reply and refusal of
  // POST /feedback, the help-label queue as loaded and the reviews sent from it.
  const state = {
    reply: null,
    explanation: null,
    model: null,
    requests: 0,
    errors: 0,
    feedback: {
      loaded: false,
      enabled: false,
      queue_below: null,
      max_age_s: null,
      sending: false,
      sent: 0,
      last: null,
      error: null,
      queue: null,
      reviewed: [],
    },
  };
  window.digitPage = state;

  // --- drawing --------------------------------------------------------------------------------

  function redraw() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = BRUSH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const stroke of strokes) {
      if (stroke.length === 1) {
        ctx.beginPath();
        ctx.arc(stroke[0][0], stroke[0][1], BRUSH / 2, 0, 2 * Math.PI);
        ctx.fill();
        continue;
      }
      ctx.beginPath();
      ctx.moveTo(stroke[0][0], stroke[0][1]);
      for (const [x, y] of stroke.slice(1)) ctx.lineTo(x, y);
      ctx.stroke();
    }
  }

  function point(event) {
    const box = pad.getBoundingClientRect();
    return [
      ((event.clientX - box.left) * pad.width) / box.width,
      ((event.clientY - box.top) * pad.height) / box.height,
    ];
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== undefined && event.button > 0) return;
    event.preventDefault();
    if (pad.setPointerCapture && event.pointerId !== undefined) {
      try {
        pad.setPointerCapture(event.pointerId);
      } catch (_) {
        // synthetic events have no active pointer to capture; drawing works without it
      }
    }
    current = [point(event)];
    strokes.push(current);
    redraw();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!current) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) current.push(point(e));
    redraw();
  });

  function endStroke(event) {
    if (!current) return;
    event.preventDefault();
    current = null;
    predictDrawing();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  $("clear").addEventListener("click", () => {
    strokes.length = 0;
    redraw();
    reset();
  });

  $("undo").addEventListener("click", () => {
    strokes.pop();
    redraw();
    if (strokes.length) predictDrawing();
    else reset();
  });

  $("predict").addEventListener("click", () => predictDrawing());

  // --- uploads ----------------------------------------------------------------------------------

  const drop = $("drop");
  const file = $("file");
  file.addEventListener("change", () => {
    if (file.files.length) predictFile(file.files[0]);
    file.value = ""; // the same file again is a new choice
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  // A picture dropped beside the upload area must not make the browser leave the page for it.
  for (const name of ["dragover", "drop"]) {
    window.addEventListener(name, (event) => event.preventDefault());
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) predictFile(files[0]);
  });

  // --- talking to the service -------------------------------------------------------------------

  function predictDrawing() {
    if (!strokes.length) {
      showError("Draw a digit first: the drawing area is empty.");
      return;
    }
    ask("/predict_canvas", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ data_url: pad.toDataURL("image/png") }),
    });
  }

  async function predictFile(picked) {
    const form = new FormData();
    form.append("image", picked, picked.name || "upload");
    await ask("/predict_image", { method: "POST", body: form });
    // On a phone the answer sits above the upload area: bring it into view.
    const answer = document.querySelector(".answer");
    if (answer.getBoundingClientRect().top < 0) answer.scrollIntoView({ block: "start" });
  }

  async function ask(path, init) {
    lastAsk = [path, init];
    const mine = ++latest;
    state.requests += 1;
    $("result").dataset.state = "busy";
    try {
      const reply = await call(path, init);
      if (mine !== latest) return;
      showAnswer(reply);
      const explanation = await call("/explain", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ image: reply.seen }),
      });
      if (mine !== latest) return;
      showWhy(explanation);
    } catch (error) {
      if (mine !== latest) return;
      reset(); // no stale answer under a new error
      showError(error.message);
    }
  }

  // With DIGIT_API_KEY set, the service answers 401 until the page sends the key: the form asks
  // for it once, it stays in this tab's sessionStorage and goes with every request.
  const KEY = "digit-api-key";
  let lastAsk = null; // [path, init] of the latest prediction, asked again once a key is given

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    $("api-key").value = "";
    $("key-form").hidden = true;
    if (lastAsk) ask(...lastAsk);
    if ($("help").open) loadQueue();
  });

  function withKey(init) {
    const key = sessionStorage.getItem(KEY);
    if (!key) return init;
    return { ...init, headers: { ...(init.headers || {}), Authorization: `Bearer ${key}` } };
  }

  // fetch → the JSON body, or an Error carrying the service's own "error" text (and, where the
  // service answered, its HTTP status as `status`).
  async function call(path, init) {
    let response;
    try {
      response = await fetch(path, withKey(init));
    } catch (_) {
      throw new Error("Could not reach the service. Is it still running?");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // not JSON: the status line is all there is to say
    }
    if (response.status === 401) {
      sessionStorage.removeItem(KEY);
      $("key-form").hidden = false;
      $("api-key").focus();
    }
    if (!response.ok) {
      const text = body && typeof body.error === "string" ? body.error : "";
      const error = new Error(
        text || `The service answered ${response.status} ${response.statusText}.`,
      );
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // --- showing ----------------------------------------------------------------------------------

  function reset() {
    latest += 1;
    state.reply = null;
    state.explanation = null;
    $("error").hidden = true;
    $("result").dataset.state = "empty";
    clearCanvas($("seen"));
    clearCanvas($("gradcam"));
    clearCanvas($("saliency"));
    $("features").replaceChildren();
    showRight();
  }

  function showError(message) {
    state.errors += 1;
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    const result = $("result");
    result.dataset.state = state.reply ? "ready" : "empty";
  }

  function percent(p) {
    return `${(100 * p).toFixed(p >= 0.9995 || p < 0.0005 ? 0 : 1)}%`;
  }

  function showAnswer(reply) {
    state.reply = reply;
    state.explanation = null;
    $("error").hidden = true;
    const probs = reply.probabilities;
    const order = probs.map((p, d) => [p, d]).sort((a, b) => b[0] - a[0]);
    const low = reply.confidence < LOW_CONFIDENCE;
    $("digit").textContent = String(reply.digit);
    $("confidence").textContent = `Confidence ${percent(reply.confidence)}`;
    const unsure = $("unsure");
    unsure.hidden = !low;
    unsure.textContent = low ? `Not sure: looks like ${order[0][1]} or ${order[1][1]}` : "";
    const bars = $("bars");
    bars.replaceChildren(
      ...probs.map((p, d) => {
        const li = document.createElement("li");
        li.dataset.digit = String(d);
        li.className = d === reply.digit ? "winner" : "";
        li.setAttribute("aria-label", `${d}: ${percent(p)}`);
        const label = document.createElement("span");
        label.textContent = String(d);
        const bar = document.createElement("span");
        bar.className = "bar";
        const fill = document.createElement("span");
        fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
        bar.append(fill);
        const pct = document.createElement("span");
        pct.className = "pct";
        pct.textContent = percent(p);
        li.append(label, bar, pct);
        return li;
      }),
    );
    $("result").dataset.state = low ? "low" : "ready";
    paint($("seen"), reply.seen, grey);
    clearCanvas($("gradcam"));
    clearCanvas($("saliency"));
    $("features").replaceChildren();
    showRight();
  }

  function showWhy(explanation) {
    state.explanation = explanation;
    const seen = state.reply.seen;
    // Grad-CAM over the input: the digit in grey, the heat on top of it.
    paint($("gradcam"), explanation.gradcam, (v, r, c) => blend(heat(v), seen[r][c], v));
    paint($("saliency"), explanation.saliency, heat);
    const holder = $("features");
    holder.replaceChildren(
      ...explanation.features.map((layer, i) => {
        const box = document.createElement("div");
        box.className = "layer";
        const title = document.createElement("h3");
        const shown = layer.maps.length;
        const of = shown < layer.channels ? `${shown} of ${layer.channels}` : `${shown}`;
        title.textContent = `Convolution layer ${i + 1} (${layer.layer}): ${of} feature maps`;
        const grid = document.createElement("div");
        grid.className = "grid";
        for (const [c, map] of layer.maps.entries()) {
          const canvas = document.createElement("canvas");
          canvas.width = map[0].length;
          canvas.height = map.length;
          canvas.setAttribute("role", "img");
          canvas.setAttribute("aria-label", `${layer.layer}, channel ${c + 1}`);
          paint(canvas, map, grey);
          grid.append(canvas);
        }
        box.append(title, grid);
        return box;
      }),
    );
  }

  function grey(v) {
    return [v, v, v];
  }

  // A dark-to-bright colour map (black, red, yellow, white) for heat-maps.
  function heat(v) {
    const t = v / 255;
    return [
      Math.round(255 * Math.min(1, 3 * t)),
      Math.round(255 * Math.min(1, Math.max(0, 3 * t - 1))),
      Math.round(255 * Math.min(1, Math.max(0, 3 * t - 2))),
    ];
  }

  function blend(colour, ink, v) {
    const a = 0.35 + (0.65 * v) / 255;
    const base = ink * 0.6;
    return colour.map((x) => Math.round(a * x + (1 - a) * base));
  }

  function paint(canvas, rows, colour) {
    const h = rows.length;
    const w = rows[0].length;
    canvas.width = w;
    canvas.height = h;
    const g = canvas.getContext("2d");
    const image = g.createImageData(w, h);
    for (let r = 0; r < h; r += 1) {
      for (let c = 0; c < w; c += 1) {
        const [red, green, blue] = colour(rows[r][c], r, c);
        const i = 4 * (r * w + c);
        image.data[i] = red;
        image.data[i + 1] = green;
        image.data[i + 2] = blue;
        image.data[i + 3] = 255;
      }
    }
    g.putImageData(image, 0, 0);
  }

  function clearCanvas(canvas) {
    const g = canvas.getContext("2d");
    g.fillStyle = "#000";
    g.fillRect(0, 0, canvas.width, canvas.height);
  }

  // --- the model: footer and "About this model" -------------------------------------------------

  function share(p, digits = 2) {
    return Number.isFinite(p) ? `${(100 * p).toFixed(digits)}%` : "unknown";
  }

  function short(hash) {
    return hash && hash !== "unknown" ? hash.slice(0, 12) : "unknown";
  }

  // The training recipe from the train.* params the run recorded.
  function recipe(params) {
    const get = (key) => params[`train.${key}`];
    const parts = [];
    if (get("epochs")) parts.push(`${get("epochs")} epochs`);
    if (get("batch_size")) parts.push(`batch size ${get("batch_size")}`);
    if (get("learning_rate")) {
      const schedule = get("lr_schedule") ? ` (${get("lr_schedule")})` : "";
      parts.push(`learning rate ${get("learning_rate")}${schedule}`);
    }
    const augment = [
      ["rotation_degrees", (v) => `rotation ±${v}°`],
      ["zoom", (v) => `zoom ±${v}`],
      ["translation", (v) => `translation ±${v}`],
    ]
      .filter(([key]) => Number(get(`augment.${key}`)) > 0)
      .map(([key, text]) => text(get(`augment.${key}`)));
    parts.push(`augmentation: ${augment.length ? augment.join(", ") : "none"}`);
    return parts.join(" · ");
  }

  function fact(key, label, text, title = "") {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.dataset.key = key;
    dd.textContent = text;
    if (title) dd.title = title;
    return [dt, dd];
  }

  function showAbout(model) {
    const arch = model.architecture;
    const dirty = model.git_dirty_files || [];
    const md5 = Object.entries(model.data_md5 || {}).map(([path, sum]) => `${path}: ${sum}`);
    const commit = model.git_commit.endsWith("-dirty")
      ? `${short(model.git_commit)}-dirty`
      : short(model.git_commit);
    $("about-facts").replaceChildren(
      ...fact("version", "Registry version", `${model.name} version ${model.version}`,
        `Bento model ${model.bento_tag}, MLflow run ${model.run_id}`),
      ...fact("accuracy", "Test accuracy",
        `${share(model.test_accuracy)} · calibration error (ECE) ${share(model.ece)}`),
      ...fact("architecture", "Architecture", arch
        ? `${arch.layers.length} layers · ${arch.parameters.toLocaleString("en")} parameters · ` +
          `${(arch.multiply_adds / 1e6).toFixed(1)} M multiply-adds per image`
        : "not recorded"),
      ...fact("recipe", "Training recipe", recipe(model.params || {})),
      ...fact("trained", "Trained at", model.trained_at || "unknown"),
      ...fact("commit", "Code commit", commit,
        dirty.length ? `uncommitted changes: ${dirty.join(", ")}` : model.git_commit),
      ...fact("data", "Data hash", short(model.data_hash), [model.data_hash, ...md5].join("\n")),
    );
    const recall = model.per_class_recall || {};
    $("about-recall").replaceChildren(
      ...[...Array(10).keys()].map((d) => {
        const li = document.createElement("li");
        li.dataset.digit = String(d);
        const r = recall[String(d)];
        const value = Number.isFinite(r) ? percent(r) : "?";
        li.setAttribute("aria-label", `${d}: ${value}`);
        const digit = document.createElement("span");
        digit.className = "d";
        digit.textContent = String(d);
        const pct = document.createElement("span");
        pct.textContent = value;
        li.append(digit, pct);
        return li;
      }),
    );
    $("about-card").hidden = !model.model_card;
    if (model.model_card) $("about-card").href = model.model_card;
    $("about-status").hidden = true;
  }

  async function showModel() {
    const info = $("model-info");
    try {
      const model = await call("/model", {});
      state.model = model;
      info.textContent = `Model ${model.name} version ${model.version} · test accuracy ` +
        share(model.test_accuracy);
      showAbout(model);
    } catch (error) {
      info.textContent = `Model information unavailable: ${error.message}`;
      $("about-status").textContent = info.textContent;
    }
  }

  // --- feedback: "Right?" under the answer -------------------------------------------------------

  const fb = state.feedback;
  const JSON_POST = { method: "POST", headers: { "Content-Type": "application/json" } };
  let rightFor = null; // the reply the "Right?" row was set up for

  $("fb-digits").replaceChildren(
    ...[...Array(10).keys()].map((d) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.label = String(d);
      button.textContent = String(d);
      button.setAttribute("aria-label", `No, it was a ${d}`);
      button.addEventListener("click", () => sendFeedback(d));
      return button;
    }),
  );
  $("fb-yes").addEventListener("click", () => {
    if (state.reply) sendFeedback(state.reply.digit);
  });
  $("fb-unsure").addEventListener("click", () => sendFeedback(null));

  function rightButtons() {
    return [$("fb-yes"), $("fb-unsure"), ...$("fb-digits").querySelectorAll("button")];
  }

  function setRightDisabled(disabled) {
    for (const button of rightButtons()) button.disabled = disabled;
  }

  // Shown under an answer the service signed (it has a prediction id) while feedback is on; a new
  // answer gets a fresh row, the same answer keeps what was sent for it.
  function showRight() {
    const reply = state.reply;
    const on = fb.enabled && reply !== null && typeof reply.prediction_id === "string" &&
      reply.prediction_id !== "";
    $("feedback").hidden = !on;
    if (!on || rightFor === reply) return;
    rightFor = reply;
    setRightDisabled(false);
    $("fb-yes").setAttribute("aria-label", `Yes, it is a ${reply.digit}`);
    $("fb-unsure").hidden = !(reply.confidence < fb.queue_below);
    for (const button of $("fb-digits").querySelectorAll("button")) {
      button.classList.toggle("answered", Number(button.dataset.label) === reply.digit);
    }
    const note = $("fb-result");
    note.hidden = true;
    note.textContent = "";
    delete note.dataset.state;
  }

  function thanks(stored) {
    if (stored.label === null) return "Thanks — stored: a helper can label it under “Help label”.";
    if (stored.correct) return "Thanks — stored: the answer was right.";
    return `Thanks — stored: it was a ${stored.label}.`;
  }

  // Worth another try: the service could not be reached, wants the key, or asks to wait.
  function passing(error) {
    return !error.status || [401, 429, 503].includes(error.status);
  }

  async function sendFeedback(label) {
    const reply = state.reply;
    if (!reply || !reply.prediction_id || fb.sending) return;
    fb.sending = true;
    fb.error = null;
    setRightDisabled(true);
    const note = $("fb-result");
    note.hidden = false;
    note.textContent = "Sending…";
    note.dataset.state = "busy";
    try {
      const stored = await call("/feedback", {
        ...JSON_POST,
        body: JSON.stringify({
          seen: reply.seen,
          answered: reply.digit,
          label,
          model_version: reply.model_version,
          prediction_id: reply.prediction_id,
        }),
      });
      fb.last = stored;
      fb.sent += 1;
      if (stored.label === null && $("help").open) loadQueue();
      if (rightFor !== reply) return;
      note.textContent = thanks(stored);
      note.dataset.state = "stored";
    } catch (error) {
      fb.error = { message: error.message, status: error.status || null };
      if (rightFor !== reply) return;
      note.textContent = error.message;
      note.dataset.state = "refused";
      if (passing(error)) setRightDisabled(false);
    } finally {
      fb.sending = false;
    }
  }

  async function loadFeedbackSettings() {
    try {
      const settings = await call("/feedback", {});
      fb.enabled = settings.enabled === true;
      fb.queue_below = settings.queue_below;
      fb.max_age_s = settings.max_age_s;
    } catch (_) {
      fb.enabled = false; // off (404), or a service without the feedback loop
    }
    fb.loaded = true;
    $("help-card").hidden = !fb.enabled;
    showRight();
  }

  // --- feedback: the "Help label" panel -----------------------------------------------------------

  let queueAsk = 0; // number of the latest queue request: older lists are ignored

  $("help").addEventListener("toggle", () => {
    if ($("help").open) loadQueue();
  });

  async function loadQueue() {
    const mine = ++queueAsk;
    const status = $("help-status");
    status.textContent = "Loading drawings to label…";
    try {
      const body = await call("/feedback/queue?limit=12", {});
      if (mine !== queueAsk) return;
      fb.queue = body.items;
      $("help-items").replaceChildren(...body.items.map(helpItem));
      queueStatus();
    } catch (error) {
      if (mine !== queueAsk) return;
      fb.queue = null;
      $("help-items").replaceChildren();
      status.textContent = `Could not load the drawings to label: ${error.message}`;
    }
  }

  function queueStatus() {
    const left = $("help-items").children.length;
    $("help-status").textContent = left
      ? `${left} drawing${left === 1 ? "" : "s"} to label, the least certain first.`
      : "Nothing to label";
  }

  function helpItem(item) {
    const li = document.createElement("li");
    li.dataset.id = String(item.id);
    const canvas = document.createElement("canvas");
    canvas.className = "pixels";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Stored drawing ${item.id}, 28 by 28 pixels`);
    paint(canvas, item.seen, grey);
    const body = document.createElement("div");
    body.className = "item";
    const said = document.createElement("p");
    said.className = "said";
    const person = item.label === null ? "the sender was not sure" : `the sender said ${item.label}`;
    said.textContent =
      `The model said ${item.answered} (${percent(item.confidence)}); ${person}.`;
    const digits = document.createElement("div");
    digits.className = "digits";
    digits.setAttribute("role", "group");
    digits.setAttribute("aria-label", `Which digit is drawing ${item.id}?`);
    const note = document.createElement("p");
    note.className = "error";
    note.setAttribute("role", "alert");
    note.hidden = true;
    const buttons = [...Array(10).keys()].map((d) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.label = String(d);
      button.textContent = String(d);
      button.setAttribute("aria-label", `Drawing ${item.id} is a ${d}`);
      button.addEventListener("click", () => review(li, item, d, buttons, note));
      return button;
    });
    digits.append(...buttons);
    body.append(said, digits, note);
    li.append(canvas, body);
    return li;
  }

  async function review(li, item, label, buttons, note) {
    for (const button of buttons) button.disabled = true;
    note.hidden = true;
    try {
      const done = await call("/feedback/review", {
        ...JSON_POST,
        body: JSON.stringify({ id: item.id, label }),
      });
      fb.reviewed.push(done);
      fb.queue = (fb.queue || []).filter((queued) => queued.id !== item.id);
      li.remove();
      // The last one shown is done: there may be more than one list's worth waiting.
      if (!$("help-items").children.length) loadQueue();
      else queueStatus();
    } catch (error) {
      fb.error = { message: error.message, status: error.status || null };
      note.textContent = error.message;
      note.hidden = false;
      if (passing(error)) for (const button of buttons) button.disabled = false;
    }
  }

  redraw();
  showModel();
  loadFeedbackSettings();
})();
