// imagebot playground: a chat timeline over the bot's JSON API, progress over server-sent events.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const timeline = $("timeline");
  const input = $("input");
  const form = $("composer");
  const fileInput = $("file-input");
  const maskInput = $("mask-input");
  const tasks = new Map(); // task id -> bot message controller
  const NAMED_CELLS = {
    "top-half": "A1:D2", "bottom-half": "A3:D4", "left-half": "A1:B4", "right-half": "C1:D4", center: "B2:C3",
  };
  let config = { regions: ["top-half", "bottom-half", "left-half", "right-half", "center", "border"], offline: true };

  // The page's words in the reader's language: config.strings (English -> translation) from the server, which
  // reads Accept-Language; English until it arrives or where a string is missing. {fields} are filled here.
  const translated = (english) => (config.strings && config.strings[english]) || english;
  function t(english, vars = {}) {
    return translated(english).replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
  }
  // A translated template whose fields are nodes (<code>, <strong>): its parts in the translation's order.
  function tNodes(english, nodes) {
    return translated(english).split(/(\{\w+\})/).filter(Boolean).map((part) => {
      const field = /^\{(\w+)\}$/.exec(part);
      return field && nodes[field[1]] ? nodes[field[1]] : part;
    });
  }
  let attached = null; // { file, url }
  let mask = null; // File
  let region = null; // "top-half" | "B2" | "A1:C2" | null
  let anchor = null; // first grid cell of a range being picked

  // --- helpers -----------------------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  const newTask = () => Math.random().toString(36).slice(2, 10) + Date.now().toString(36).slice(-4);
  const clock = () => new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const nearBottom = () => timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 160;
  let stick = true; // follow new messages unless the reader scrolled up
  timeline.addEventListener("scroll", () => { stick = nearBottom(); }, { passive: true });
  function scrollDown(force) {
    if (force) stick = true;
    if (stick) requestAnimationFrame(() => { timeline.scrollTop = timeline.scrollHeight; });
  }

  const ICONS = {
    reroll: "M17.65 6.35A7.96 7.96 0 0 0 12 4a8 8 0 1 0 7.73 10h-2.08A6 6 0 1 1 12 6c1.66 0 3.14.69 4.22 1.78L13 11h7V4z",
    remix: "M3 17.25V21h3.75L17.81 9.94l-3.75-3.75zM20.71 7.04a1 1 0 0 0 0-1.41l-2.34-2.34a1 1 0 0 0-1.41 0l-1.83 1.83 3.75 3.75z",
    download: "M5 20h14v-2H5zM19 9h-4V3H9v6H5l7 7z",
  };
  function icon(name) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "18");
    svg.setAttribute("height", "18");
    svg.setAttribute("aria-hidden", "true");
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute("d", ICONS[name]);
    svg.append(path);
    return svg;
  }

  async function api(url, body) {
    const options = { method: "POST", headers: { "X-Imagebot": "1" }, credentials: "same-origin" };
    if (body instanceof FormData) options.body = body;
    else { options.headers["Content-Type"] = "application/json"; options.body = JSON.stringify(body || {}); }
    try {
      const response = await fetch(url, options);
      const data = await response.json().catch(() => null);
      if (data && data.error) return { error: data.error.message, cancelled: data.error.kind === "cancelled" };
      if (!response.ok || !data) return { error: t("The bot answered with HTTP {status}. Please try again.", { status: response.status }) };
      return data;
    } catch (err) {
      return { error: t("I can't reach the bot right now (is it running?). Please try again in a moment.") };
    }
  }

  // --- messages ----------------------------------------------------------------------------------------

  function message(who, ...content) {
    const bot = who === "bot";
    const body = el("div", { class: "body" },
      el("div", { class: "meta" },
        el("span", { class: bot ? "author bot-name" : "author", text: bot ? "imagebot" : t("You") }),
        bot ? el("span", { class: "tag", text: "bot" }) : null,
        el("span", { class: "time", text: clock() })),
      ...content);
    const node = el("article", { class: "msg" + (bot ? " from-bot" : " from-user") },
      el("div", { class: "avatar " + (bot ? "bot" : "user"), "aria-hidden": "true", text: bot ? "IB" : "Y" }), body);
    timeline.append(node);
    scrollDown(who === "user");
    return body;
  }

  function userMessage(text, imageUrl, chip) {
    const parts = [];
    if (text) parts.push(el("div", { class: "text", text }));
    if (imageUrl) parts.push(el("img", { class: "thumb", src: imageUrl, alt: t("Your image") }));
    const body = message("user", ...parts);
    if (chip) body.querySelector(".meta").append(el("span", { class: "chip", text: chip }));
  }

  // A bot reply that follows one task from "sent" to its images or its error.
  function botReply(task, what) {
    const label = el("span", { text: what + "…" });
    const progress = el("div", { class: "progress" }, el("span", { class: "spinner", "aria-hidden": "true" }), label);
    const body = message("bot", progress);
    let timer = null;
    let preview = null;
    let finished = false;
    let cancel = null; // the Cancel button while the job waits in line

    // Cancel while queued: the request itself then answers "Cancelled"; once running it is too late.
    function offerCancel(job) {
      if (cancel) return;
      cancel = el("button", { class: "btn btn-grey small cancel", type: "button", text: t("Cancel"),
                              "aria-label": t("Cancel this request"), onclick: async () => {
        cancel.disabled = true;
        const answer = await api(`/api/jobs/${job}/cancel`, {});
        if (answer.error && !finished) {
          body.append(el("div", { class: "note", role: "status", text: answer.error }));
          dropCancel();
        }
      } });
      progress.append(cancel);
    }
    function dropCancel() { if (cancel) { cancel.remove(); cancel = null; } }

    // A partial image while the real one is made: shown blurred until the result replaces it.
    function showPreview(url) {
      if (!preview) {
        preview = el("img", { class: "partial", alt: t("Preview of the image being made"),
                              onload: () => { preview.classList.add("shown"); scrollDown(false); } });
        body.append(preview);
      }
      preview.src = url;
    }

    function running(since) {
      clearInterval(timer);
      const tick = () => { label.textContent = t("Generating… {seconds} s", { seconds: Math.round((Date.now() - since) / 1000) }); };
      tick();
      timer = setInterval(tick, 1000);
    }

    const controller = {
      body,
      progress(event) {
        if (finished) return;
        if (event.status === "queued") {
          clearInterval(timer);
          label.textContent = event.text || (event.position ? t("Queued — #{position} in line", { position: event.position }) : t("Queued…"));
          if (event.job) offerCancel(event.job);
        } else if (event.status === "running" && event.preview) showPreview(event.preview);
        else if (event.status === "running") { dropCancel(); running(Date.now()); }
      },
      finish(result) {
        if (finished) return;
        finished = true;
        clearInterval(timer);
        tasks.delete(task);
        progress.remove();
        if (preview) preview.remove();
        if (result.cancelled) body.append(el("div", { class: "note cancelled", role: "status", text: result.error }));
        else if (result.error) body.append(el("div", { class: "error", role: "alert", text: result.error }));
        else if (result.status === "awaiting_confirmation") renderConfirmation(body, result);
        else if (result.status === "done") renderResult(body, result);
        else if (result.status === "upscaled") renderUpscaled(body, result);
        scrollDown(false);
      },
    };
    tasks.set(task, controller);
    return controller;
  }

  async function runJob(what, url, body) {
    const task = newTask();
    const reply = botReply(task, what);
    const result = await api(`${url}?task=${task}`, body);
    reply.finish(result);
  }

  function renderResult(body, result) {
    const job = result.job;
    const count = result.images.length;
    const kind = { generate: "", edit: t("edit · "), vary: t("variations · ") }[job.kind] || "";
    body.append(title(job));
    body.append(el("div", { class: "note", text: `${kind}${job.model || ""} · ${t(count === 1 ? "{count} image" : "{count} images", { count })}`
      + (result.duplicate ? t(" · same as your earlier request") : "") }));
    if (result.notice) body.append(el("div", { class: "note", text: result.notice }));
    const grid = el("div", { class: "images " + (count === 1 ? "n1" : count <= 4 ? "n" + count : "many") });
    for (const image of result.images) {
      grid.append(el("figure", { class: "tile" },
        el("a", { href: image.url, target: "_blank", rel: "noopener", title: t("Open full size") },
          el("img", { src: image.url, alt: image.alt, width: image.width, height: image.height,
                      onload: () => scrollDown(false) })),
        count > 1 ? el("span", { class: "badge", text: String(image.index) }) : null,
        el("a", { class: "dl", href: image.download, download: image.filename, title: t("Download {filename}", { filename: image.filename }),
                  "aria-label": t("Download image {index}", { index: image.index }) }, icon("download"))));
    }
    body.append(grid);

    const upscale = el("div", { class: "actions", role: "group", "aria-label": t("Upscale images") });
    const vary = el("div", { class: "actions", role: "group", "aria-label": t("Variations and more") });
    for (const image of result.images) {
      upscale.append(el("button", { class: "btn btn-grey", type: "button", text: `U${image.index}`,
                                    title: t("Image {index} on its own, with Zoom out and Pan", { index: image.index }),
                                    onclick: () => runJob(t("Upscaling image {index}", { index: image.index }),
                                                          `/api/jobs/${job.id}/upscale/${image.index}`, {}) }));
      vary.append(el("button", { class: "btn btn-grey", type: "button", title: t("Variations of image {index}", { index: image.index }),
                                 text: `V${image.index}`,
                                 onclick: () => runJob(t("Making variations of image {index}", { index: image.index }),
                                                       `/api/jobs/${job.id}/vary/${image.index}`, {}) }));
    }
    vary.append(el("button", { class: "btn btn-grey", type: "button", title: "🔄 The same request again",
                               onclick: () => runJob(t("Rerolling"), `/api/jobs/${job.id}/reroll`, {}) },
                   icon("reroll"), el("span", { text: t("Reroll") })));
    vary.append(el("button", { class: "btn btn-grey", type: "button", title: "✏️ Change the prompt and make it again",
                               onclick: () => openRemix(body, job) }, icon("remix"), el("span", { text: t("Remix") })));
    body.append(upscale, vary);
  }

  // "Zoom out 2× of image 1 — a red fox" (the story from the server); a plain request shows just its prompt.
  function title(job) {
    if (!job.headline) return el("div", { class: "text" }, el("strong", { text: job.prompt || t("variation") }));
    return el("div", { class: "text story" }, el("strong", { text: job.headline }),
              job.prompt ? el("span", { text: " — " }) : null, job.prompt ? el("em", { text: job.prompt }) : null);
  }

  const UPSCALE_TOOLS = [
    ["Vary (Subtle)", "Making subtle variations of image {index}", "vary", { strength: "subtle" }],
    ["Vary (Strong)", "Making strong variations of image {index}", "vary", { strength: "strong" }],
    ["Zoom out 1.5x", "Zooming out image {index} 1.5×", "outpaint", { zoom: 1.5 }],
    ["Zoom out 2x", "Zooming out image {index} 2×", "outpaint", { zoom: 2 }],
  ];
  const PAN_TOOLS = [["⬅️", "left"], ["➡️", "right"], ["⬆️", "up"], ["⬇️", "down"]];

  // U: one image on its own, full size, with its tools (each makes a new job from that image).
  function renderUpscaled(body, result) {
    const job = result.job;
    const [image] = result.images;
    body.append(title(job));
    body.append(el("div", { class: "images n1" }, el("figure", { class: "tile" },
      el("a", { href: image.url, target: "_blank", rel: "noopener", title: t("Open full size") },
        el("img", { src: image.url, alt: image.alt, width: image.width, height: image.height,
                    onload: () => scrollDown(false) })),
      el("a", { class: "dl", href: image.download, download: image.filename, title: t("Download {filename}", { filename: image.filename }),
                "aria-label": t("Download image {index}", { index: image.index }) }, icon("download")))));
    const base = `/api/jobs/${job.id}`;
    const tools = el("div", { class: "actions", role: "group", "aria-label": t("Vary and zoom out") });
    for (const [label, doing, route, args] of UPSCALE_TOOLS) {
      tools.append(el("button", { class: "btn btn-grey", type: "button", text: t(label),
                                  onclick: () => runJob(t(doing, { index: result.index }),
                                                        `${base}/${route}/${result.index}`, args) }));
    }
    const pans = el("div", { class: "actions", role: "group", "aria-label": t("Pan and remix") });
    for (const [arrow, direction] of PAN_TOOLS) {
      pans.append(el("button", { class: "btn btn-grey", type: "button", text: arrow, "aria-label": t(`Pan ${direction}`),
                                 title: t(`Pan ${direction}`),
                                 onclick: () => runJob(t(`Panning ${direction}`), `${base}/outpaint/${result.index}`,
                                                       { pan: direction }) }));
    }
    pans.append(el("button", { class: "btn btn-grey", type: "button", title: "✏️ Change the prompt and make it again",
                               onclick: () => openRemix(body, job) }, icon("remix"), el("span", { text: t("Remix") })));
    body.append(tools, pans);
  }

  function openRemix(body, job) {
    const existing = body.querySelector(".remix");
    if (existing) { existing.querySelector("input").focus(); return; }
    const field = el("input", { type: "text", value: job.prompt, "aria-label": t("New prompt") });
    const box = el("form", { class: "remix" }, field,
      el("button", { class: "btn btn-brand", type: "submit", text: t("Remix") }),
      el("button", { class: "btn btn-grey", type: "button", text: t("Cancel"), onclick: () => box.remove() }));
    box.addEventListener("submit", (event) => {
      event.preventDefault();
      const prompt = field.value.trim();
      if (!prompt) return;
      box.remove();
      userMessage(prompt, null, "remix");
      runJob(t("Remixing"), `/api/jobs/${job.id}/remix`, { prompt });
    });
    body.append(box);
    field.focus();
    field.select();
  }

  function renderConfirmation(body, result) {
    const cost = result.estimate_text || "more than usual";
    body.append(el("div", { class: "text", text: t("This request will cost {cost}. Go ahead?", { cost }) }));
    const row = el("div", { class: "actions" });
    row.append(
      el("button", { class: "btn btn-brand", type: "button", text: t("Confirm"), onclick: () => {
        row.remove(); runJob(t("Starting"), `/api/jobs/${result.job.id}/confirm`, {});
      } }),
      el("button", { class: "btn btn-grey", type: "button", text: t("Cancel"), onclick: async () => {
        row.remove(); await api(`/api/jobs/${result.job.id}/cancel`, {});
        body.append(el("div", { class: "note", text: t("Cancelled.") }));
      } }));
    body.append(row);
  }

  // --- attachment, regions and mask --------------------------------------------------------------------

  function attach(file) {
    if (!file || !file.type.startsWith("image/")) {
      message("bot", el("div", { class: "error", role: "alert",
        text: t("That file isn't an image I can read. Send a PNG, JPEG, WebP or GIF.") }));
      return;
    }
    if (attached) URL.revokeObjectURL(attached.url);
    attached = { file, url: URL.createObjectURL(file) };
    $("preview-img").src = attached.url;
    $("attach-name").textContent = file.name || t("pasted image");
    setMask(null);
    setRegion(null);
    $("attachment").hidden = false;
    input.placeholder = t("Describe the change (e.g. a dragon in the sky), or send with no text for variations");
    input.focus();
  }

  function detach() {
    if (attached) URL.revokeObjectURL(attached.url);
    attached = null;
    setMask(null);
    setRegion(null);
    $("attachment").hidden = true;
    fileInput.value = "";
    input.placeholder = promptHint();
  }

  function setMask(file) {
    mask = file;
    $("mask-name").textContent = file ? file.name || "mask" : "";
    maskInput.value = "";
    if (file) setRegion(null);
    refreshReadout();
  }

  function cellRange(spec) {
    const cells = new Set();
    if (!spec) return cells;
    if (spec === "border") {
      for (const c of "ABCD") for (const r of "1234") if (!("BC".includes(c) && "23".includes(r))) cells.add(c + r);
      return cells;
    }
    const range = NAMED_CELLS[spec] || spec;
    const [from, to] = range.includes(":") ? range.split(":") : [range, range];
    const cols = ["ABCD".indexOf(from[0]), "ABCD".indexOf(to[0])].sort();
    const rows = [Number(from[1]), Number(to[1])].sort();
    for (let c = cols[0]; c <= cols[1]; c++) for (let r = rows[0]; r <= rows[1]; r++) cells.add("ABCD"[c] + r);
    return cells;
  }

  function setRegion(value) {
    region = value;
    anchor = null;
    if (value) { mask = null; $("mask-name").textContent = ""; }
    const on = cellRange(value);
    for (const cell of $("grid").children) {
      cell.classList.toggle("on", on.has(cell.dataset.cell));
      cell.setAttribute("aria-pressed", String(on.has(cell.dataset.cell)));
      cell.classList.remove("anchor");
    }
    for (const button of $("regions").children) {
      button.classList.toggle("selected", button.dataset.region === value);
      button.setAttribute("aria-pressed", String(button.dataset.region === value));
    }
    refreshReadout();
  }

  // A named region as its label in the reader's language ("Top half"); grid cells as they are.
  const regionName = (name) => (name && config.region_labels && config.region_labels[name]) || name;

  // The static page's words: [data-i18n] text, [data-i18n-<attribute>] attributes, and the two lines with markup.
  function translatePage() {
    if (config.locale) document.documentElement.lang = config.locale;
    document.title = t("imagebot playground");
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const attribute of ["aria-label", "title", "alt"]) {
      for (const node of document.querySelectorAll(`[data-i18n-${attribute}]`)) {
        node.setAttribute(attribute, t(node.getAttribute(`data-i18n-${attribute}`)));
      }
    }
    $("topic").replaceChildren(...tNodes(
      "Type {command} and a description · drop, paste or attach an image to edit or vary it",
      { command: el("code", { text: "/imagine" }) }));
    $("attach-hint").replaceChildren(...tNodes(
      "With a prompt: {edit} it (only inside the region or mask, if you pick one). Without a prompt: {variations}.",
      { edit: el("strong", { text: t("edit") }), variations: el("strong", { text: t("variations") }) }));
    refreshReadout();
  }

  function refreshReadout() {
    $("region-value").textContent = mask ? t("inside the mask") : regionName(region) || t("whole image");
  }

  function pickCell(cell) {
    if (anchor && anchor !== cell) {
      const cols = [anchor[0], cell[0]].sort();
      const rows = [anchor[1], cell[1]].sort();
      setRegion(`${cols[0]}${rows[0]}:${cols[1]}${rows[1]}`);
      return;
    }
    if (anchor === cell) { setRegion(cell); return; }
    setRegion(cell);
    anchor = cell;
    const node = $("grid").querySelector(`[data-cell="${cell}"]`);
    if (node) node.classList.add("anchor");
  }

  function buildPickers() {
    const grid = $("grid");
    for (const r of "1234") for (const c of "ABCD") {
      const name = c + r;
      grid.append(el("button", { type: "button", class: "cell", "data-cell": name, title: t("Cell {name} (click another cell for a range)", { name }),
                                 "aria-label": t("Cell {name}", { name }), "aria-pressed": "false", text: name,
                                 onclick: () => pickCell(name) }));
    }
    const regions = $("regions");
    regions.replaceChildren();
    for (const name of config.regions) {
      regions.append(el("button", { type: "button", class: "btn btn-grey small", "data-region": name, text: regionName(name),
                                    "aria-pressed": "false", onclick: () => setRegion(region === name ? null : name) }));
    }
  }

  // --- sending -------------------------------------------------------------------------------------------

  function send() {
    const text = input.value.trim();
    if (!text && !attached) {
      hint(t("Type what you'd like me to draw (for example: a lighthouse at dusk), or attach a picture first."));
      input.focus();
      return;
    }
    hint("");
    input.value = "";
    autosize();
    if (attached) {
      const data = new FormData();
      data.append("image", attached.file, attached.file.name || "image.png");
      if (text) {
        data.append("prompt", text);
        if (mask) data.append("mask", mask, mask.name || "mask.png");
        else if (region) data.append("region", region);
        userMessage(text, attached.url, mask ? t("mask") : regionName(region) || null);
        runJob(t("Editing your image"), "/api/edit", data);
      } else {
        userMessage("", attached.url, t("variations"));
        runJob(t("Making variations"), "/api/vary", data);
      }
      attached = null; // not revoked: the timeline keeps showing the picture
      detach();
      return;
    }
    userMessage(text);
    runJob(t("Imagining"), "/api/imagine", { text });
  }

  // A short note under the composer (announced to screen readers), e.g. for an empty message.
  function hint(text) {
    $("composer-hint").textContent = text;
    $("composer-hint").hidden = !text;
  }

  // The composer's example fits its width: a phone gets a shorter one, so no flag is cut in two.
  const narrow = window.matchMedia("(max-width: 640px)");
  const promptHint = () => (narrow.matches ? "/imagine a fox --size 1536x1024"
                                           : "/imagine a red fox in the snow --n 4 --size 1536x1024");
  narrow.addEventListener("change", () => { if (!attached) input.placeholder = promptHint(); });

  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 200) + "px";
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
  });
  input.addEventListener("input", () => { autosize(); hint(""); });
  fileInput.addEventListener("change", () => fileInput.files[0] && attach(fileInput.files[0]));
  maskInput.addEventListener("change", () => maskInput.files[0] && setMask(maskInput.files[0]));
  $("attach-remove").addEventListener("click", detach);
  $("region-clear").addEventListener("click", () => { setMask(null); setRegion(null); });

  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) { event.preventDefault(); attach(file); }
  });
  let dragDepth = 0;
  window.addEventListener("dragenter", (event) => {
    if (![...event.dataTransfer.types].includes("Files")) return;
    dragDepth++;
    $("drop").hidden = false;
  });
  window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop").hidden = true; } });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    $("drop").hidden = true;
    const file = event.dataTransfer.files[0];
    if (file) attach(file);
  });

  // --- progress stream and start-up ---------------------------------------------------------------------

  function setStatus(state, text) {
    $("status").dataset.state = state;
    $("status-text").textContent = text;
  }

  function connect() {
    const source = new EventSource("/api/events");
    source.onopen = () => setStatus("online", config.offline ? t("online · offline generator") : t("online · {provider}", { provider: config.provider }));
    source.onerror = () => setStatus("offline", t("reconnecting…"));
    source.onmessage = (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      const reply = tasks.get(data.task);
      if (reply) reply.progress(data);
    };
  }

  // A past job without images: why (failed, with its reference id; or cut off by a restart, at no charge).
  function renderPast(body, result) {
    const job = result.job;
    body.append(el("div", { class: "text" }, el("strong", { text: job.prompt || t("variation") })));
    body.append(el("div", { class: result.status === "failed" ? "error" : "note interrupted",
                            role: result.status === "failed" ? "alert" : null, text: result.message }));
  }

  // Past jobs of this browser session, so a reload (or a restart of the bot) keeps the timeline.
  async function loadHistory() {
    let data = null;
    try {
      const response = await fetch("/api/history", { credentials: "same-origin" });
      if (response.ok) data = await response.json();
    } catch { /* the stream status shows the problem */ }
    if (!data || !data.jobs) return;
    for (const result of data.jobs) {
      const body = message("bot");
      const when = new Date(result.job.created_at * 1000);
      body.querySelector(".time").textContent = when.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
      if (result.status === "done") renderResult(body, result);
      else renderPast(body, result);
    }
    scrollDown(true);
  }

  // The flags and the values each takes (from the model catalogue), one line per flag.
  function flagHelp(flags) {
    const list = el("ul", { class: "flags", "aria-label": t("Flags") });
    for (const flag of flags) {
      list.append(el("li", {}, el("code", { class: "flag", text: flag.name }), " ",
                     el("span", { class: "values", text: flag.values })));
    }
    return list;
  }

  async function start() {
    try {
      const response = await fetch("/api/config", { credentials: "same-origin" });
      if (response.ok) config = await response.json();
    } catch { /* keep the defaults; the stream status shows the problem */ }
    translatePage();
    buildPickers();
    input.placeholder = promptHint();
    const examples = el("div", { class: "text" },
      ...tNodes("Hi! Tell me what to draw: {example}. Drop, paste or attach a picture to edit it or get variations.",
                { example: el("code", { text: "/imagine a lighthouse at dusk --n 2" }) }));
    const welcome = [examples, flagHelp(config.flags || [])];
    if (config.offline) {
      welcome.push(el("div", { class: "note",
        text: t("No OPENAI_API_KEY is set, so pictures come from the built-in offline generator.") }));
    }
    message("bot", ...welcome);
    await loadHistory();
    connect();
    input.focus();
  }

  start();
})();
