// The scrapscan dashboard: one page over the service's own API, no framework, no build.
// Views by the URL's fragment: #/ live feed, #/frames/<id>, #/trucks, #/trucks/<id>.
// The API key (when the service has keys) lives in this tab's sessionStorage only and
// goes out in the Authorization header; images are fetched with it and shown as blobs.

const KEY = "scrapscan.key";
const PAGE = 50; // feed rows a page
const KEEP = 5000; // feed rows kept in memory
const OPENING = 200; // finished frames the feed opens with
const CLASSES = ["motor", "cable", "spray_can"];
const VERDICTS = ["clean", "inspect", "reject"];

const view = document.getElementById("view");
const noticeBox = document.getElementById("notice");

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function withKey(headers = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

async function api(path, options = {}) {
  const answer = await fetch(path, { ...options, headers: withKey(options.headers) });
  if (!answer.ok) {
    let code = `http_${answer.status}`;
    let message = answer.statusText;
    try {
      const body = await answer.json();
      ({ code, message } = body.error);
    } catch {
      // not the service's error body: keep the status line
    }
    throw new ApiError(answer.status, code, message);
  }
  return answer;
}

const getJson = async (path) => (await api(path)).json();

async function postJson(path, body) {
  const answer = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return answer.json();
}

const images = new Map(); // path -> object URL, the latest few hundred

async function imageUrl(path) {
  if (images.has(path)) return images.get(path);
  const url = URL.createObjectURL(await (await api(path)).blob());
  images.set(path, url);
  if (images.size > 400) {
    const [oldest, stale] = images.entries().next().value;
    images.delete(oldest);
    URL.revokeObjectURL(stale);
  }
  return url;
}

async function download(path, name) {
  const url = URL.createObjectURL(await (await api(path)).blob());
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---------------------------------------------------------------- small helpers

// An element with attributes (on* take listeners) and children (strings become text).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

const svg = (tag, attrs = {}) => {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  return el;
};

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const fmtScore = (v) => (v === null || v === undefined ? "–" : v.toFixed(2));
const className = (c) => c.replace("_", " ");

function fmtTime(item) {
  const when = item.captured_at ? new Date(item.captured_at) : new Date(item.completed_at * 1000);
  return when.toLocaleString();
}

function verdictBadge(verdict, status) {
  const text = status === "failed" ? "failed" : verdict || status;
  return h("span", { class: `badge ${text}` }, text);
}

function notice(message, kind = "error") {
  noticeBox.textContent = message;
  noticeBox.className = kind;
  noticeBox.hidden = !message;
}

// What an error means to the person at the screen; a 401 asks for a key.
function explain(err) {
  if (!(err instanceof ApiError)) {
    notice(`The service cannot be reached (${err.message}).`);
  } else if (err.status === 401) {
    notice(`This service needs an API key: ${err.message}.`);
    showKeyForm(true);
  } else if (err.status === 403) {
    notice(`This key may not do that: ${err.message}.`);
  } else {
    notice(`${err.message} (${err.code}).`);
  }
}

// ---------------------------------------------------------------- the API key

const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");

function showKeyForm(open) {
  keyForm.hidden = !open;
  if (open) keyInput.focus();
}

document.getElementById("key-button").addEventListener("click", () => showKeyForm(keyForm.hidden));
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, keyInput.value.trim());
  keyInput.value = "";
  keyChanged();
});
document.getElementById("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  keyChanged();
});

function keyChanged() {
  showKeyForm(false);
  notice("");
  for (const url of images.values()) URL.revokeObjectURL(url);
  images.clear();
  feed.restart();
  route();
  refreshStatus();
}

// ---------------------------------------------------------------- the system strip

const strip = document.getElementById("system");

async function pollStatus() {
  for (;;) {
    await refreshStatus();
    await sleep(5000);
  }
}

let statusSoon = null;

// New frames change the figures: refresh the strip within a second, once for a burst.
function refreshStatusSoon() {
  if (statusSoon !== null) return;
  statusSoon = setTimeout(() => {
    statusSoon = null;
    refreshStatus();
  }, 1000);
}

async function refreshStatus() {
  try {
    const s = await getJson("/v1/status");
    const model = s.model ? `${s.model.name} ${s.model.version}` : "no frame yet";
    strip.replaceChildren(
      h(
        "li",
        { class: s.ready ? "ok" : "bad", title: s.not_ready || "" },
        s.ready ? "ready" : "not ready",
      ),
      h("li", {}, "model ", h("b", {}, model)),
      h("li", {}, "backlog ", h("b", { id: "backlog" }, String(s.backlog))),
      h("li", {}, h("b", {}, s.frames_per_minute.toFixed(1)), " frames/min"),
      h(
        "li",
        { class: s.failed_last_hour ? "bad" : "" },
        h("b", {}, String(s.failed_last_hour)),
        " failed (1 h)",
      ),
      h("li", { id: "live" }),
    );
  } catch (err) {
    strip.replaceChildren(
      h("li", { class: "bad" }, err.status === 401 ? "no key" : "status unavailable"),
      h("li", { id: "live" }),
    );
  }
  showLive();
}

// ---------------------------------------------------------------- the live feed

function showLive() {
  const item = document.getElementById("live");
  if (!item) return;
  item.className = feed.live ? "ok" : "bad";
  item.textContent = feed.live ? "live" : "reconnecting";
}

function setLive(live) {
  feed.live = live;
  showLive();
}

// Server-sent events read with fetch (EventSource cannot send the key): calls
// onEvent(id, data) for each event of the stream until it ends.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(id, data.join("\n"));
    }
  }
}

const feed = {
  items: [], // newest first
  cursor: null, // the last event id seen: a dropped connection resumes after it
  cameras: new Set(),
  live: false,
  page: 0,
  controller: null,
  generation: 0,

  restart() {
    this.generation += 1;
    this.controller?.abort();
    this.items = [];
    this.cursor = null;
    this.cameras.clear();
    this.page = 0;
    this.follow(this.generation);
  },

  async follow(generation) {
    while (generation === this.generation) {
      const controller = new AbortController();
      this.controller = controller;
      try {
        const resume = this.cursor !== null;
        const answer = await api(
          resume ? "/v1/results/stream" : `/v1/results/stream?last=${OPENING}`,
          {
            headers: resume ? { "Last-Event-ID": this.cursor } : {},
            signal: controller.signal,
          },
        );
        setLive(true);
        await readEvents(answer.body, (id, data) => {
          if (generation !== this.generation) return;
          this.cursor = id;
          this.add(JSON.parse(data));
        });
      } catch (err) {
        if (generation !== this.generation) return;
        if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
          setLive(false);
          if (location.hash === "" || location.hash === "#/") explain(err);
          return; // a new key restarts the feed
        }
      }
      setLive(false);
      await sleep(2000);
    }
  },

  add(item) {
    this.items.unshift(item);
    if (this.items.length > KEEP) this.items.length = KEEP;
    this.cameras.add(item.camera_id);
    scheduleFeedRender();
    refreshStatusSoon();
  },
};

let feedFilter = { camera: "", verdict: "" };
let renderPending = false;

function scheduleFeedRender() {
  if (renderPending || !onFeed()) return;
  renderPending = true;
  setTimeout(() => {
    renderPending = false;
    if (onFeed()) renderFeedList();
  }, 200);
}

const onFeed = () => location.hash === "" || location.hash === "#/";

function shown(item) {
  if (feedFilter.camera && item.camera_id !== feedFilter.camera) return false;
  if (!feedFilter.verdict) return true;
  if (feedFilter.verdict === "failed") return item.status === "failed";
  return item.verdict === feedFilter.verdict;
}

function showFeed() {
  const camera = h("select", { id: "filter-camera", "aria-label": "camera" });
  const verdict = h(
    "select",
    { id: "filter-verdict", "aria-label": "verdict" },
    h("option", { value: "" }, "every verdict"),
    ...[...VERDICTS, "failed"].map((v) => h("option", { value: v }, v)),
  );
  verdict.value = feedFilter.verdict;
  const change = () => {
    feedFilter = { camera: camera.value, verdict: verdict.value };
    feed.page = 0;
    renderFeedList();
  };
  camera.addEventListener("change", change);
  verdict.addEventListener("change", change);
  view.replaceChildren(
    h(
      "section",
      { class: "feed" },
      h(
        "div",
        { class: "toolbar" },
        h("h1", {}, "Live feed"),
        camera,
        verdict,
        h("span", { id: "feed-count" }),
        h("button", { id: "newer", type: "button", onclick: () => turn(-1) }, "Newer"),
        h("span", { id: "feed-page" }),
        h("button", { id: "older", type: "button", onclick: () => turn(1) }, "Older"),
      ),
      h("ol", { id: "feed-list", class: "cards" }),
    ),
  );
  renderFeedList();
}

function turn(step) {
  feed.page = Math.max(0, feed.page + step);
  renderFeedList();
}

function renderFeedList() {
  const list = document.getElementById("feed-list");
  if (!list) return;
  const camera = document.getElementById("filter-camera");
  const chosen = feedFilter.camera;
  if (camera.options.length !== feed.cameras.size + 1) {
    camera.replaceChildren(
      h("option", { value: "" }, "every camera"),
      ...[...feed.cameras].sort().map((c) => h("option", { value: c }, c)),
    );
    camera.value = chosen;
  }
  const rows = feed.items.filter(shown);
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  feed.page = Math.min(feed.page, pages - 1);
  document.getElementById("feed-count").textContent = `${rows.length} frames`;
  document.getElementById("feed-page").textContent = `page ${feed.page + 1} of ${pages}`;
  document.getElementById("newer").disabled = feed.page === 0;
  document.getElementById("older").disabled = feed.page >= pages - 1;
  list.replaceChildren(...rows.slice(feed.page * PAGE, (feed.page + 1) * PAGE).map(feedCard));
}

function feedCard(item) {
  const thumb = h("img", { alt: `overlay of frame ${item.frame_id}`, width: 240, height: 135 });
  if (item.status === "done") {
    imageUrl(`${item.links.overlay}?width=320`).then(
      (url) => {
        thumb.src = url;
      },
      () => {},
    );
  }
  const scores = CLASSES.filter((c) => item.scores && item.scores[c] !== undefined).map((c) =>
    h("span", { class: `score ${c}` }, `${className(c)} ${fmtScore(item.scores[c])}`),
  );
  return h(
    "li",
    { class: "card", dataset: { frame: item.frame_id } },
    h(
      "a",
      { href: `#/frames/${item.frame_id}` },
      item.status === "done" ? thumb : h("div", { class: "failed-thumb" }, item.error || "failed"),
      h(
        "div",
        { class: "meta" },
        verdictBadge(item.verdict, item.status),
        h("span", { class: "camera" }, item.camera_id),
        item.truck_id ? h("span", { class: "truck" }, item.truck_id) : null,
        h("span", { class: "instances" }, `${item.instances} found`),
        h("time", {}, fmtTime(item)),
      ),
      h("div", { class: "scores" }, scores),
    ),
  );
}

// ---------------------------------------------------------------- a frame

async function showFrame(frameId) {
  const [frame, feedback] = await Promise.all([
    getJson(`/v1/frames/${frameId}`),
    getJson(`/v1/frames/${frameId}/feedback`),
  ]);
  const result = frame.result;
  if (frame.status !== "done" || !result || !result.image) {
    view.replaceChildren(
      h(
        "section",
        { class: "frame" },
        h("h1", {}, `Frame ${frameId}`),
        verdictBadge(result?.verdict, frame.status),
        h(
          "p",
          {},
          frame.error ||
            (result ? "Its full result has passed the retention." : `It is ${frame.status}.`),
        ),
      ),
    );
    return;
  }
  const { width, height } = result.image;
  const figure = h("figure", { class: "overlay" });
  const img = h("img", { alt: `overlay of frame ${frameId}` });
  const layer = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: "none",
    id: "shapes",
  });
  figure.append(img, layer);
  imageUrl(frame.links.overlay).then((url) => {
    img.src = url;
  }, explain);

  const shapes = result.instances.map((inst, i) => {
    const poly = svg("polygon", {
      points: inst.polygon.map(([x, y]) => `${x},${y}`).join(" "),
      class: `shape ${inst.zero_shot ? "zero-shot" : inst.class}`,
      "data-index": i,
    });
    layer.append(poly);
    return poly;
  });
  const select = (i) => {
    shapes.forEach((s, k) => s.classList.toggle("selected", k === i));
    rows.forEach((r, k) => r.classList.toggle("selected", k === i));
  };

  const latest = new Map();
  for (const item of feedback) if (item.instance !== null) latest.set(item.instance, item);
  const rows = result.instances.map((inst, i) =>
    instanceRow(frameId, inst, i, latest.get(i), select),
  );
  shapes.forEach((s, i) => {
    s.addEventListener("mouseenter", () => select(i));
    s.addEventListener("click", () => rows[i].focus());
  });

  const picture = h(
    "select",
    { id: "picture", "aria-label": "picture" },
    h("option", { value: "" }, "overlay"),
    ...["anomaly", ...CLASSES].map((c) => h("option", { value: c }, `heat map: ${className(c)}`)),
  );
  picture.addEventListener("change", () => {
    const path = picture.value
      ? `/v1/frames/${frameId}/heatmap.png?class=${picture.value}`
      : frame.links.overlay;
    figure.classList.toggle("heat", Boolean(picture.value));
    imageUrl(path).then((url) => {
      img.src = url;
    }, explain);
  });
  const maskToggle = h("input", { type: "checkbox", id: "mask-toggle", checked: true });
  maskToggle.addEventListener("change", () =>
    figure.classList.toggle("masks-hidden", !maskToggle.checked),
  );

  view.replaceChildren(
    h(
      "section",
      { class: "frame" },
      h(
        "div",
        { class: "toolbar" },
        h("h1", {}, "Frame ", h("code", {}, frameId)),
        verdictBadge(result.verdict, frame.status),
        picture,
        h("label", {}, maskToggle, " mask"),
        missedButton(frameId, figure, layer, width, height),
      ),
      h(
        "div",
        { class: "split" },
        figure,
        h(
          "aside",
          {},
          h(
            "dl",
            { class: "facts" },
            h("dt", {}, "camera"),
            h("dd", {}, frame.camera_id),
            h("dt", {}, "truck"),
            h(
              "dd",
              {},
              frame.truck_id
                ? h("a", { href: `#/trucks/${encodeURIComponent(frame.truck_id)}` }, frame.truck_id)
                : "–",
            ),
            h("dt", {}, "captured"),
            h("dd", {}, frame.captured_at ? new Date(frame.captured_at).toLocaleString() : "–"),
            h("dt", {}, "model"),
            h("dd", { id: "model" }, `${result.model.name} ${result.model.version}`),
            h("dt", {}, "bed"),
            h("dd", {}, `${result.bed.strategy}, ${result.tiles} tiles`),
            h("dt", {}, "scores"),
            h(
              "dd",
              {},
              CLASSES.map((c) => `${className(c)} ${fmtScore(result.scores[c])}`).join(" · "),
            ),
          ),
          h("h2", {}, `Instances (${result.instances.length})`),
          result.instances.length
            ? h(
                "table",
                { class: "instances", id: "instances" },
                h(
                  "thead",
                  {},
                  h(
                    "tr",
                    {},
                    h("th", {}, "#"),
                    h("th", {}, "class"),
                    h("th", {}, "score"),
                    h("th", {}, "area px"),
                    h("th", {}, "judged"),
                    h("th", {}, "judge"),
                  ),
                ),
                h("tbody", {}, rows),
              )
            : h("p", {}, "None found."),
          h(
            "p",
            { class: "hint" },
            "Keys on a row: c confirm, f false alarm, o other class, ↑ ↓ move.",
          ),
          h("h2", {}, "Timings (ms)"),
          h(
            "table",
            { class: "timings" },
            h(
              "tbody",
              {},
              Object.entries(result.timings_ms).map(([stage, ms]) =>
                h("tr", {}, h("th", {}, stage), h("td", {}, ms.toFixed(0))),
              ),
            ),
          ),
          h("h2", {}, "Feedback"),
          h("ul", { id: "feedback-list" }, feedback.map(feedbackLine)),
        ),
      ),
    ),
  );
  if (rows.length) select(0);
}

function feedbackLine(item) {
  const what =
    item.label === "missed"
      ? `missed ${item.class || "contaminant"} at ${item.box.join(", ")}`
      : `#${item.instance} ${item.label.replace("_", " ")}${item.class ? ` (${className(item.class)})` : ""}`;
  return h(
    "li",
    {},
    `${what} by ${item.by}, ${new Date(item.at * 1000).toLocaleString()}`,
    item.comment ? ` – ${item.comment}` : "",
  );
}

function instanceRow(frameId, inst, i, judged, select) {
  const state = h("td", { class: "judged" }, judged ? judgedText(judged) : "–");
  const other = h(
    "select",
    { "aria-label": `other class for instance ${i}` },
    h("option", { value: "" }, "other class…"),
    ...CLASSES.filter((c) => c !== inst.class).map((c) => h("option", { value: c }, className(c))),
  );
  const send = async (body) => {
    try {
      const item = await postJson(`/v1/frames/${frameId}/feedback`, { instance: i, ...body });
      state.textContent = judgedText(item);
      document.getElementById("feedback-list")?.append(feedbackLine(item));
      notice("");
    } catch (err) {
      explain(err);
    }
  };
  other.addEventListener(
    "change",
    () => other.value && send({ label: "other_class", class: other.value }),
  );
  const row = h(
    "tr",
    {
      tabindex: 0,
      "data-index": i,
      "aria-label": `instance ${i}: ${className(inst.class)} ${fmtScore(inst.score)}`,
    },
    h("td", {}, String(i)),
    h(
      "td",
      {},
      h("span", { class: `swatch ${inst.zero_shot ? "zero-shot" : inst.class}` }),
      className(inst.class) + (inst.zero_shot ? " (defined by text)" : ""),
      inst.description
        ? h(
            "div",
            { class: "description" },
            inst.description + (inst.verified === false ? " (unverified)" : ""),
          )
        : "",
    ),
    h("td", {}, fmtScore(inst.score)),
    h("td", {}, String(inst.area)),
    state,
    h(
      "td",
      { class: "actions" },
      h(
        "button",
        { type: "button", class: "confirm", onclick: () => send({ label: "confirmed" }) },
        "Confirm",
      ),
      h(
        "button",
        { type: "button", class: "false-alarm", onclick: () => send({ label: "false_alarm" }) },
        "False alarm",
      ),
      other,
    ),
  );
  row.addEventListener("focus", () => select(i));
  row.addEventListener("mouseenter", () => select(i));
  row.addEventListener("keydown", (event) => {
    if (event.target !== row) return;
    if (event.key === "c") send({ label: "confirmed" });
    else if (event.key === "f") send({ label: "false_alarm" });
    else if (event.key === "o") other.focus();
    else if (event.key === "ArrowDown") row.nextElementSibling?.focus();
    else if (event.key === "ArrowUp") row.previousElementSibling?.focus();
    else return;
    event.preventDefault();
  });
  return row;
}

function judgedText(item) {
  return item.label === "other_class"
    ? `other: ${className(item.class)}`
    : item.label.replace("_", " ");
}

// "Mark missed": drag a box on the overlay, name the class if known, save.
function missedButton(frameId, figure, layer, width, height) {
  const button = h("button", { type: "button", id: "mark-missed" }, "Mark a missed contaminant");
  button.addEventListener("click", () => {
    figure.classList.add("drawing");
    notice("Drag a box around the contaminant the service missed.", "info");
    let start = null;
    const box = svg("rect", { class: "missed-box" });
    const at = (event) => {
      const r = layer.getBoundingClientRect();
      return [
        Math.min(width, Math.max(0, ((event.clientX - r.left) / r.width) * width)),
        Math.min(height, Math.max(0, ((event.clientY - r.top) / r.height) * height)),
      ];
    };
    const rect = (a, b) =>
      [
        Math.min(a[0], b[0]),
        Math.min(a[1], b[1]),
        Math.abs(a[0] - b[0]),
        Math.abs(a[1] - b[1]),
      ].map(Math.round);
    const down = (event) => {
      start = at(event);
      layer.append(box);
      layer.setPointerCapture(event.pointerId);
    };
    const move = (event) => {
      if (!start) return;
      const [x, y, w, hh] = rect(start, at(event));
      Object.entries({ x, y, width: w, height: hh }).forEach(([k, v]) => box.setAttribute(k, v));
    };
    const up = (event) => {
      if (!start) return;
      const drawn = rect(start, at(event));
      start = null;
      layer.removeEventListener("pointerdown", down);
      layer.removeEventListener("pointermove", move);
      layer.removeEventListener("pointerup", up);
      figure.classList.remove("drawing");
      if (drawn[2] < 2 || drawn[3] < 2) {
        box.remove();
        notice("");
        return;
      }
      askMissed(frameId, drawn, box);
    };
    layer.addEventListener("pointerdown", down);
    layer.addEventListener("pointermove", move);
    layer.addEventListener("pointerup", up);
  });
  return button;
}

function askMissed(frameId, drawn, box) {
  const cls = h(
    "select",
    { "aria-label": "class of the missed contaminant" },
    h("option", { value: "" }, "class unknown"),
    ...CLASSES.map((c) => h("option", { value: c }, className(c))),
  );
  const comment = h("input", {
    type: "text",
    maxlength: 500,
    placeholder: "comment",
    "aria-label": "comment",
  });
  const said = h("ol", { class: "said", "aria-label": "what the region encoder sees" });
  // the bundle's region encoder on the box: its nearest descriptions; a contaminant class
  // it names is taken as the class (the operator may change it)
  const ask = async () => {
    try {
      const answer = await postJson(`/v1/frames/${frameId}/describe`, { box: drawn });
      said.replaceChildren(
        ...answer.descriptions.map((d) =>
          h("li", {}, `${d.text} (${className(d.class)}, ${d.similarity.toFixed(2)})`),
        ),
      );
      if (answer.description_class !== "normal" && !cls.value) cls.value = answer.description_class;
    } catch (err) {
      explain(err);
    }
  };
  const form = h(
    "form",
    { class: "missed-form" },
    `Box ${drawn.join(", ")}: `,
    cls,
    comment,
    h("button", { type: "submit" }, "Save"),
    h("button", { type: "button", class: "ask", onclick: ask }, "What is it?"),
    said,
    h(
      "button",
      {
        type: "button",
        onclick: () => {
          form.remove();
          box.remove();
          notice("");
        },
      },
      "Cancel",
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const item = await postJson(`/v1/frames/${frameId}/feedback`, {
        label: "missed",
        box: drawn,
        class: cls.value || null,
        comment: comment.value,
      });
      document.getElementById("feedback-list")?.append(feedbackLine(item));
      form.remove();
      notice("Saved: the missed contaminant is marked for labelling.", "info");
    } catch (err) {
      explain(err);
    }
  });
  notice("");
  view.querySelector(".toolbar").after(form);
  cls.focus();
}

// ---------------------------------------------------------------- trucks

let truckQuery = { since: "", verdict: "" };

async function showTrucks() {
  const since = h("input", {
    type: "datetime-local",
    id: "trucks-since",
    value: truckQuery.since,
    "aria-label": "since",
  });
  const verdict = h(
    "select",
    { id: "trucks-verdict", "aria-label": "verdict" },
    h("option", { value: "" }, "every verdict"),
    ...VERDICTS.map((v) => h("option", { value: v }, v)),
  );
  verdict.value = truckQuery.verdict;
  const params = () => {
    const q = new URLSearchParams();
    if (truckQuery.since) q.set("since", new Date(truckQuery.since).toISOString());
    if (truckQuery.verdict) q.set("verdict", truckQuery.verdict);
    return q;
  };
  const change = () => {
    truckQuery = { since: since.value, verdict: verdict.value };
    showTrucks().catch(explain);
  };
  since.addEventListener("change", change);
  verdict.addEventListener("change", change);
  const csv = () => {
    const q = params();
    q.set("format", "csv");
    download(`/v1/trucks?${q}`, "trucks.csv").catch(explain);
  };
  const { trucks, next } = await getJson(`/v1/trucks?${params()}`);
  const rows = h("tbody", {}, trucks.map(truckRow));
  // the listing comes a page at a time; older pages are added below on request
  const older = h("button", { type: "button", id: "trucks-older" }, "Older trucks");
  let cursor = next;
  older.hidden = !cursor;
  older.addEventListener("click", async () => {
    const q = params();
    q.set("after", cursor);
    try {
      const page = await getJson(`/v1/trucks?${q}`);
      rows.append(...page.trucks.map(truckRow));
      cursor = page.next;
      older.hidden = !cursor;
    } catch (err) {
      explain(err);
    }
  });
  view.replaceChildren(
    h(
      "section",
      { class: "trucks" },
      h(
        "div",
        { class: "toolbar" },
        h("h1", {}, "Trucks"),
        h("label", {}, "since ", since),
        verdict,
        h("button", { type: "button", onclick: csv }, "Download CSV"),
      ),
      trucks.length
        ? h(
            "table",
            { id: "trucks" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                [
                  "truck",
                  "verdict",
                  "frames",
                  "failed",
                  "pending",
                  "last seen",
                  ...CLASSES.map(className),
                ].map((t) => h("th", {}, t)),
              ),
            ),
            rows,
          )
        : h("p", {}, "No truck in this period."),
      older,
    ),
  );
}

function truckRow(t) {
  return h(
    "tr",
    {},
    h("td", {}, h("a", { href: `#/trucks/${encodeURIComponent(t.truck_id)}` }, t.truck_id)),
    h("td", {}, verdictBadge(t.verdict)),
    h("td", {}, String(t.frames)),
    h("td", {}, String(t.frames_failed)),
    h("td", {}, String(t.frames_pending)),
    h("td", {}, t.last_seen ? new Date(t.last_seen).toLocaleString() : "–"),
    CLASSES.map((c) => h("td", {}, fmtScore(t.classes[c]?.highest_score))),
  );
}

async function showTruck(truckId) {
  const base = `/v1/trucks/${encodeURIComponent(truckId)}`;
  const [report, decisions] = await Promise.all([
    getJson(`${base}/report`),
    getJson(`${base}/decisions`),
  ]);
  const decision = h(
    "select",
    { id: "decision", "aria-label": "decision" },
    h("option", { value: "accepted" }, "accepted"),
    h("option", { value: "rejected" }, "rejected"),
    h("option", { value: "manual_inspection" }, "sent for manual inspection"),
  );
  const comment = h("input", {
    type: "text",
    id: "decision-comment",
    maxlength: 500,
    placeholder: "comment",
    "aria-label": "comment",
  });
  const history = h("ul", { id: "decisions" }, decisions.map(decisionLine));
  const form = h(
    "form",
    { class: "decision" },
    "Decision: ",
    decision,
    comment,
    h("button", { type: "submit" }, "Record"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      history.append(
        decisionLine(
          await postJson(`${base}/decisions`, { decision: decision.value, comment: comment.value }),
        ),
      );
      comment.value = "";
      notice("");
    } catch (err) {
      explain(err);
    }
  });
  const evidence = report.evidence.map((e) => {
    const img = h("img", { alt: `evidence frame ${e.frame_id}`, width: 240, height: 135 });
    imageUrl(`${e.overlay}?width=320`).then(
      (url) => {
        img.src = url;
      },
      () => {},
    );
    return h(
      "li",
      { class: "card" },
      h(
        "a",
        { href: `#/frames/${e.frame_id}` },
        img,
        h("div", { class: "meta" }, `${className(e.class)} ${fmtScore(e.score)}`),
        e.description ? h("div", { class: "meta description" }, e.description) : null,
      ),
    );
  });
  view.replaceChildren(
    h(
      "section",
      { class: "truck" },
      h(
        "div",
        { class: "toolbar" },
        h("h1", {}, "Truck ", h("code", {}, truckId)),
        verdictBadge(report.verdict),
        h(
          "button",
          {
            type: "button",
            onclick: () => download(`${base}/report?format=csv`, `${truckId}.csv`).catch(explain),
          },
          "Download CSV",
        ),
      ),
      h(
        "p",
        {},
        `${report.frames} frames processed, ${report.frames_failed} failed, ${report.frames_pending} pending; `,
        `seen ${report.first_seen ? new Date(report.first_seen).toLocaleString() : "–"} to ${report.last_seen ? new Date(report.last_seen).toLocaleString() : "–"}.`,
      ),
      h(
        "table",
        { id: "truck-classes" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["class", "highest score", "frames", "instances", "area px"].map((t) => h("th", {}, t)),
          ),
        ),
        h(
          "tbody",
          {},
          CLASSES.map((c) => {
            const f = report.classes[c] || {};
            return h(
              "tr",
              {},
              h("td", {}, className(c)),
              h("td", {}, fmtScore(f.highest_score)),
              h("td", {}, String(f.frames ?? 0)),
              h("td", {}, String(f.instances ?? 0)),
              h("td", {}, String(f.area_px ?? 0)),
            );
          }),
        ),
      ),
      h("h2", {}, "Evidence"),
      evidence.length
        ? h("ol", { class: "cards" }, evidence)
        : h("p", {}, "No frame with an instance."),
      h("h2", {}, "Decisions"),
      form,
      history,
    ),
  );
}

function decisionLine(d) {
  return h(
    "li",
    {},
    `${d.decision.replace("_", " ")} by ${d.by}, ${new Date(d.at * 1000).toLocaleString()}`,
    d.comment ? ` – ${d.comment}` : "",
  );
}

// ---------------------------------------------------------------- routing

async function route() {
  const hash = location.hash || "#/";
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", hash.startsWith("#/trucks") === (a.dataset.nav === "trucks"));
  }
  try {
    let m;
    if ((m = hash.match(/^#\/frames\/([0-9a-f]{32})$/))) await showFrame(m[1]);
    else if ((m = hash.match(/^#\/trucks\/(.+)$/))) await showTruck(decodeURIComponent(m[1]));
    else if (hash === "#/trucks") await showTrucks();
    else showFeed();
  } catch (err) {
    view.replaceChildren();
    explain(err);
  }
}

window.addEventListener("hashchange", () => {
  notice("");
  route();
});
feed.restart();
route();
pollStatus();
