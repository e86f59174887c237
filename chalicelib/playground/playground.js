// The OpenDevelop playground: plain JavaScript, no library, no build step.
// Every API call is relative to this page's own URL, so the page works wherever it is
// served: `chalice local` at /, or API Gateway at /<stage>/.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const BASE = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const EMBED = ["1", "true", "yes"].includes((new URLSearchParams(location.search).get("embed") || "").toLowerCase());
  const LIMITS = ["timeout", "memory_mb", "cpus", "pids", "disk_mb", "output_kb"];
  const LIMIT_NAMES = { timeout: "timeout (s)", memory_mb: "memory (MB)", cpus: "CPUs", pids: "processes", disk_mb: "disk (MB)", output_kb: "output (KB)" };
  const KEPT_RUNS = 50; // runs whose files this browser keeps (the API does not return a run's files)
  const KEPT_BYTES = 256 * 1024;
  const HISTORY_PAGE = 10;
  const FINAL = ["terminated", "error", "cancelled"];
  const HELLO = {
    ".py": 'print("Hello, world!")\n',
    ".js": 'console.log("Hello, world!");\n',
    ".mjs": 'console.log("Hello, world!");\n',
    ".cjs": 'console.log("Hello, world!");\n',
    ".cpp": '#include <iostream>\n\nint main() {\n    std::cout << "Hello, world!" << std::endl;\n    return 0;\n}\n',
    ".cc": '#include <iostream>\n\nint main() {\n    std::cout << "Hello, world!" << std::endl;\n}\n',
    ".cxx": '#include <iostream>\n\nint main() {\n    std::cout << "Hello, world!" << std::endl;\n}\n',
    ".c": '#include <stdio.h>\n\nint main(void) {\n    printf("Hello, world!\\n");\n    return 0;\n}\n',
    ".go": 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("Hello, world!")\n}\n',
    ".java": 'public class Main {\n    public static void main(String[] args) {\n        System.out.println("Hello, world!");\n    }\n}\n',
    ".rb": 'puts "Hello, world!"\n',
    ".rs": 'fn main() {\n    println!("Hello, world!");\n}\n',
    ".php": '<?php\necho "Hello, world!\\n";\n',
  };

  const state = {
    auth: null, // {app, secret}
    images: [],
    image: null,
    files: [], // [{name, content}]
    current: 0,
    pristine: true, // the files are still the image's hello world
    ceilings: {},
    run: null, // {id, cancelled}
    next: null, // history cursor
    historyAsked: 0,
  };

  // ---- the API ---------------------------------------------------------------

  class ApiError extends Error {}

  function authHeader() {
    return "Basic " + btoa(unescape(encodeURIComponent(state.auth.app + ":" + state.auth.secret)));
  }

  async function api(path, options) {
    const opts = Object.assign({ method: "GET" }, options || {});
    // X-Requested-With: the API's 401 then challenges with "xBasic", which browsers leave to the page
    // (a "Basic" challenge would open the browser's own sign-in dialog over it).
    opts.headers = Object.assign({ Accept: "application/json", "X-Requested-With": "XMLHttpRequest" }, opts.headers || {});
    if (state.auth && !opts.anonymous) opts.headers.Authorization = authHeader();
    let response;
    try {
      response = await fetch(BASE + path, opts);
    } catch (e) {
      throw new ApiError("The API did not answer (" + e.message + ")");
    }
    if (opts.raw) {
      if (!response.ok) throw await errorOf(response);
      return response;
    }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
    if (!response.ok) throw errorFrom(response, body, text);
    return body;
  }

  async function errorOf(response) {
    const text = await response.text();
    let body = null;
    try { body = JSON.parse(text); } catch (e) { body = null; }
    return errorFrom(response, body, text);
  }

  // The API words its errors {"Code", "Message"}: shown as it words them.
  function errorFrom(response, body, text) {
    const err = body && body.Code ? new ApiError(body.Code + ": " + body.Message) : new ApiError("HTTP " + response.status + ": " + (text || response.statusText).slice(0, 300));
    err.status = response.status;
    return err;
  }

  function showError(e) {
    const box = $("error");
    if (!e) { box.hidden = true; box.textContent = ""; return; }
    box.textContent = e instanceof ApiError ? e.message : "Error: " + (e && e.message ? e.message : e);
    box.hidden = false;
    if (box.scrollIntoView) box.scrollIntoView({ block: "nearest" });
  }

  // ---- signing in --------------------------------------------------------------

  function fragmentParams() {
    return new URLSearchParams(location.hash.replace(/^#/, ""));
  }

  async function start() {
    if (EMBED) return startEmbed();
    const kept = sessionStorage.getItem("opendevelop.auth");
    if (kept) {
      try { state.auth = JSON.parse(kept); } catch (e) { state.auth = null; }
    }
    if (state.auth) {
      try { await enter(); return; } catch (e) { signOut(); showError(e); }
    }
    $("sign-in").hidden = false;
    $("app-id").focus();
    ready();
  }

  async function signIn(event) {
    event.preventDefault();
    showError(null);
    state.auth = { app: $("app-id").value.trim(), secret: $("secret").value };
    $("sign-in-button").disabled = true;
    try {
      await enter();
      sessionStorage.setItem("opendevelop.auth", JSON.stringify(state.auth));
      $("secret").value = "";
    } catch (e) {
      state.auth = null;
      showError(e);
    } finally {
      $("sign-in-button").disabled = false;
    }
  }

  function signOut() {
    sessionStorage.removeItem("opendevelop.auth");
    state.auth = null;
    $("main").hidden = $("who").hidden = $("sign-out").hidden = $("history-toggle").hidden = true;
    $("sign-in").hidden = false;
  }

  // Signed in once the images answer: a wrong secret is the API's 401, shown as it says it.
  async function enter() {
    const images = await api("api/images?detail=true");
    await loadCeilings();
    state.images = images;
    const select = $("image");
    select.textContent = "";
    for (const image of images) {
      const option = document.createElement("option");
      option.value = image.name;
      option.textContent = image.name + (image.language ? " — " + image.language : "") + (image.version ? " " + image.version : "");
      select.appendChild(option);
    }
    const preferred = images.find((i) => i.name === "python") || images[0];
    if (preferred) chooseImage(preferred.name, true);
    $("sign-in").hidden = true;
    $("main").hidden = $("who").hidden = $("sign-out").hidden = $("history-toggle").hidden = false;
    $("who").textContent = "app " + state.auth.app;
    showHistory(true);
    $("code").focus();
    ready();
  }

  // The ceilings are the API's own document's (`GET api/openapi.json`, no credentials needed):
  // each limit's minimum, default and maximum under the settings in force.
  async function loadCeilings() {
    try {
      const doc = await api("api/openapi.json", { anonymous: true });
      const props = doc.paths["/api/sandboxes"].post.requestBody.content["application/json"].schema.properties;
      for (const name of LIMITS) if (props[name]) state.ceilings[name] = props[name];
    } catch (e) {
      state.ceilings = {};
    }
    const box = $("limits");
    box.textContent = "";
    for (const name of LIMITS) {
      const c = state.ceilings[name] || {};
      const label = document.createElement("label");
      label.textContent = LIMIT_NAMES[name] + (c.maximum !== undefined ? " ≤ " + c.maximum : "");
      const input = document.createElement("input");
      input.type = "number";
      input.id = "limit-" + name;
      input.step = name === "cpus" ? "0.1" : "1";
      if (c.minimum !== undefined) input.min = c.minimum;
      if (c.maximum !== undefined) input.max = c.maximum;
      input.placeholder = c.default !== undefined ? String(c.default) : "default";
      label.appendChild(input);
      box.appendChild(label);
    }
    $("limits-about").textContent = "Empty means the default (shown greyed). The ceilings are the platform's; an app may have lower ones, and the API then says so.";
  }

  function ready() {
    document.body.dataset.ready = "1";
    if (performance.mark) performance.mark("playground-ready");
  }

  // ---- the editor --------------------------------------------------------------

  function extensionOf(name) {
    const m = /\.[^./]+$/.exec(name);
    return m ? m[0] : "";
  }

  function helloFile(image) {
    const exts = image.extensions || [];
    let ext = exts[0] || "";
    if (!ext && /^python/.test(image.run || "")) ext = ".py";
    const name = ext === ".java" ? "Main.java" : "main" + ext;
    return { name: name, content: HELLO[ext] || "" };
  }

  function shellQuote(s) {
    return /^[A-Za-z0-9_./-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
  }

  function commandFor(image, file) {
    const ext = extensionOf(file);
    const template = (image.run_by_extension || {})[ext] || image.run || "";
    const stem = file.split("/").pop().replace(/\.[^.]*$/, "");
    return template.split("{file}").join(shellQuote(file)).split("{stem}").join(shellQuote(stem));
  }

  function chooseImage(name, fresh) {
    const image = state.images.find((i) => i.name === name);
    if (!image) return;
    const previous = state.image;
    state.image = image;
    $("image").value = name;
    const about = [image.description, image.version ? "version " + image.version : "", image.run ? "runs: " + image.run : ""].filter(Boolean);
    $("image-about").textContent = about.join(" · ");
    const hello = helloFile(image);
    if (fresh || state.pristine) {
      state.files = [hello];
      state.current = 0;
      state.pristine = true;
      $("cmd").value = commandFor(image, hello.name);
    } else if (!previous || $("cmd").value === commandFor(previous, state.files[0].name)) {
      $("cmd").value = commandFor(image, state.files[state.current].name);
    }
    renderFiles();
  }

  function renderFiles() {
    const tabs = $("tabs");
    tabs.textContent = "";
    state.files.forEach((file, i) => {
      const tab = document.createElement("button");
      tab.type = "button";
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-selected", String(i === state.current));
      tab.textContent = file.name;
      tab.addEventListener("click", () => { saveEditor(); state.current = i; renderFiles(); $("code").focus(); });
      tabs.appendChild(tab);
    });
    const file = state.files[state.current];
    $("code").value = file ? file.content : "";
    $("code").disabled = !file;
    $("file-rename").disabled = $("file-delete").disabled = !file;
  }

  function saveEditor() {
    const file = state.files[state.current];
    if (file && file.content !== $("code").value) {
      file.content = $("code").value;
      state.pristine = false;
    }
  }

  function askName(message, initial) {
    const name = (window.prompt(message, initial) || "").trim();
    if (!name) return null;
    if (state.files.some((f, i) => f.name === name && i !== state.current)) {
      showError(new ApiError("There is already a file named " + name));
      return null;
    }
    return name;
  }

  function addFile() {
    saveEditor();
    const ext = state.files[0] ? extensionOf(state.files[0].name) : "";
    const name = askName("New file's name (folders with /):", "file" + (state.files.length + 1) + ext);
    if (!name) return;
    state.files.push({ name: name, content: "" });
    state.current = state.files.length - 1;
    state.pristine = false;
    renderFiles();
    $("code").focus();
  }

  function renameFile() {
    saveEditor();
    const file = state.files[state.current];
    if (!file) return;
    const name = askName("Rename " + file.name + " to:", file.name);
    if (!name) return;
    file.name = name;
    state.pristine = false;
    renderFiles();
  }

  function deleteFile() {
    const file = state.files[state.current];
    if (!file || !window.confirm("Delete " + file.name + "?")) return;
    state.files.splice(state.current, 1);
    state.current = Math.max(0, state.current - 1);
    state.pristine = false;
    renderFiles();
  }

  // ---- running -----------------------------------------------------------------

  function request() {
    saveEditor();
    const body = {
      image: state.image ? state.image.name : "",
      cmd: [$("cmd").value],
      files: state.files.map((f) => ({ name: f.name, content: f.content })),
    };
    if ($("stdin").value) body.stdin = $("stdin").value;
    const env = {};
    const lines = $("env").value.split("\n");
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (!line) continue;
      const at = line.indexOf("=");
      if (at < 1) throw new ApiError("env: line " + (i + 1) + " is not NAME=value");
      env[line.slice(0, at)] = line.slice(at + 1);
    }
    if (Object.keys(env).length) body.env = env;
    for (const name of LIMITS) {
      const input = $("limit-" + name);
      if (input && input.value !== "") body[name] = Number(input.value);
    }
    return body;
  }

  async function run() {
    if (state.run || !state.auth) return;
    showError(null);
    let body;
    try { body = request(); } catch (e) { showError(e); return; }
    setRunning(true);
    clearResult();
    setStatus("submitting");
    try {
      const sandbox = await api("api/sandboxes", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      state.run = { id: sandbox.id, cancelled: false };
      keepRun(sandbox.id, body);
      setStatus(sandbox.status, sandbox.id);
      await follow(sandbox.id);
      const final = await settled(sandbox.id);
      showResult(final, false);
      if (!EMBED) showHistory(true);
    } catch (e) {
      if (!state.run) setStatus("refused");
      showError(e);
      const line = document.createElement("span");
      line.className = "err";
      line.textContent = $("error").textContent;
      $("output").appendChild(line);
    } finally {
      state.run = null;
      setRunning(false);
    }
  }

  // The live tail: the interleaved output from byte `offset`, each call held up to 20 s.
  async function follow(id) {
    let offset = 0;
    const out = $("output");
    let looked = 0;
    for (;;) {
      const part = await api("api/sandboxes/" + id + "/logs?offset=" + offset + "&wait=20");
      if (part.data) {
        out.appendChild(document.createTextNode(part.data));
        out.scrollTop = out.scrollHeight;
      }
      offset = part.next;
      if (part.done) return;
      if (++looked % 3 === 0 || !part.data) {
        const now = await api("api/sandboxes/" + id);
        setStatus(now.status, id);
      } else if ($("status").dataset.status === "queued") {
        setStatus("running", id);
      }
    }
  }

  async function settled(id) {
    for (;;) {
      const sandbox = await api("api/sandboxes/" + id + "?wait=20");
      if (FINAL.includes(sandbox.status)) return sandbox;
    }
  }

  async function cancel() {
    if (!state.run) return;
    state.run.cancelled = true;
    $("cancel").disabled = true;
    try {
      const sandbox = await api("api/sandboxes/" + state.run.id, { method: "DELETE" });
      setStatus(sandbox.status, sandbox.id);
    } catch (e) {
      showError(e);
    }
  }

  function setRunning(on) {
    $("run").disabled = on;
    $("cancel").disabled = !on;
  }

  function setStatus(status, id) {
    const el = $("status");
    el.dataset.status = status || "";
    el.textContent = status ? status + (id ? " · " + id : "") : "";
  }

  function clearResult() {
    $("output").textContent = "";
    $("facts").hidden = $("streams").hidden = $("downloads").hidden = true;
    $("facts").textContent = $("downloads").textContent = "";
  }

  function fact(dl, name, value, flag) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (flag) dd.className = "flag";
    dd.dataset.fact = name;
    dl.appendChild(dt);
    dl.appendChild(dd);
  }

  function size(n) {
    return n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KiB" : (n / 1048576).toFixed(1) + " MiB";
  }

  function showResult(sb, reopened) {
    setStatus(sb.status, sb.id);
    if (reopened || !$("output").textContent) $("output").textContent = sb.logs || "";
    const dl = $("facts");
    dl.textContent = "";
    fact(dl, "return code", sb.return_code === null ? "—" : String(sb.return_code), sb.return_code !== null && sb.return_code !== 0);
    fact(dl, "duration", sb.duration_ms === null ? "—" : sb.duration_ms + " ms");
    const flags = [];
    if (sb.timed_out) flags.push("time limit reached");
    if (sb.oom_killed) flags.push("memory limit reached (OOM-killed)");
    if (sb.output_truncated) flags.push("output truncated at output_kb");
    if (sb.inline_truncated) flags.push("shown in part: download for the whole");
    if (sb.output_gone) flags.push("stored output expired");
    fact(dl, "flags", flags.length ? flags.join(", ") : "none", flags.length > 0);
    if (sb.error) fact(dl, "error", sb.error, true);
    fact(dl, "image", sb.image + (sb.limits ? " · " + LIMITS.filter((n) => sb.limits[n] !== undefined).map((n) => n + " " + sb.limits[n]).join(", ") : ""));
    dl.hidden = false;
    $("stdout").textContent = sb.stdout || "";
    $("stderr").textContent = sb.stderr || "";
    $("stdout-size").textContent = "(" + size(sb.stdout_bytes || 0) + ")";
    $("stderr-size").textContent = "(" + size(sb.stderr_bytes || 0) + ")";
    $("streams").hidden = false;
    const downloads = $("downloads");
    downloads.textContent = "";
    if (!sb.output_gone) {
      if (sb.stdout_bytes) downloads.appendChild(downloadButton("stdout", "api/sandboxes/" + sb.id + "/stdout", sb.id + ".stdout"));
      if (sb.stderr_bytes) downloads.appendChild(downloadButton("stderr", "api/sandboxes/" + sb.id + "/stderr", sb.id + ".stderr"));
    }
    for (const artifact of sb.artifacts || []) {
      const path = artifact.name.split("/").map(encodeURIComponent).join("/");
      downloads.appendChild(downloadButton(artifact.name + " (" + size(artifact.size || 0) + ")", "api/sandboxes/" + sb.id + "/artifacts/" + path, artifact.name.split("/").pop()));
    }
    downloads.hidden = downloads.childElementCount === 0;
  }

  // Downloads need the app's credentials, so they are fetched and handed over as a blob.
  function downloadButton(label, path, filename) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Download " + label;
    button.addEventListener("click", async () => {
      showError(null);
      try {
        const response = await api(path, { raw: true, headers: { Accept: "*/*" } });
        const url = URL.createObjectURL(await response.blob());
        const a = document.createElement("a");
        a.href = url;
        a.download = filename;
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } catch (e) {
        showError(e);
      }
    });
    return button;
  }

  // ---- history -----------------------------------------------------------------

  // The API keeps no copy of a run's files once it has run, so this browser keeps the
  // requests it sent (the latest KEPT_RUNS, each up to KEPT_BYTES) to reopen them whole.
  function keptRuns() {
    try { return JSON.parse(localStorage.getItem("opendevelop.runs." + state.auth.app) || "[]"); } catch (e) { return []; }
  }

  function keepRun(id, body) {
    const entry = { id: id, files: body.files, stdin: body.stdin || "", env: body.env || {} };
    if (JSON.stringify(entry).length > KEPT_BYTES) return;
    const runs = [entry].concat(keptRuns().filter((r) => r.id !== id)).slice(0, KEPT_RUNS);
    try { localStorage.setItem("opendevelop.runs." + state.auth.app, JSON.stringify(runs)); } catch (e) { /* storage full: history still shows the run */ }
  }

  // A fresh load replaces the list only when its page arrives, and only if no later load was asked for.
  async function showHistory(fresh) {
    const asked = ++state.historyAsked;
    const cursor = fresh ? null : state.next;
    try {
      const page = await api("api/sandboxes?limit=" + HISTORY_PAGE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
      if (asked !== state.historyAsked) return;
      if (fresh) $("history-list").textContent = "";
      for (const sb of page.sandboxes) $("history-list").appendChild(historyItem(sb));
      state.next = page.next;
      $("history-more").hidden = !page.next;
    } catch (e) {
      showError(e);
    }
  }

  function historyItem(sb) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = sb.id;
    const cells = [
      (sb.created_at || "").replace("T", " ").slice(0, 19),
      sb.image,
      sb.status + (sb.return_code !== null && sb.return_code !== undefined ? " · " + sb.return_code : ""),
      commandText(sb.cmd),
      sb.id,
    ];
    cells.forEach((text, i) => {
      const span = document.createElement("span");
      span.textContent = text;
      if (i >= 3) span.className = "mono";
      button.appendChild(span);
    });
    button.addEventListener("click", () => reopen(sb.id));
    li.appendChild(button);
    return li;
  }

  function commandText(cmd) {
    try {
      const list = JSON.parse(cmd);
      return Array.isArray(list) ? list.join(" && ") : String(cmd);
    } catch (e) {
      return String(cmd || "");
    }
  }

  async function reopen(id) {
    if (state.run) return;
    showError(null);
    try {
      const sb = await api("api/sandboxes/" + id);
      if (state.images.some((i) => i.name === sb.image)) chooseImage(sb.image, true);
      const kept = keptRuns().find((r) => r.id === id);
      if (kept) {
        state.files = kept.files.map((f) => ({ name: f.name, content: f.content }));
        $("stdin").value = kept.stdin;
        $("env").value = Object.entries(kept.env).map(([k, v]) => k + "=" + v).join("\n");
      } else {
        state.files = [];
        $("stdin").value = $("env").value = "";
        showError(new ApiError("This browser did not keep the files of run " + id + " (the API returns a run's command, limits and output, not its files)"));
      }
      state.current = 0;
      state.pristine = false;
      renderFiles();
      $("cmd").value = commandText(sb.cmd);
      for (const name of LIMITS) {
        const input = $("limit-" + name);
        if (input) input.value = sb.limits && sb.limits[name] !== undefined ? sb.limits[name] : "";
      }
      clearResult();
      showResult(sb, true);
      window.scrollTo(0, 0);
    } catch (e) {
      showError(e);
    }
  }

  // ---- embed mode ----------------------------------------------------------------

  // ?embed=1#app=ID&key=SECRET&image=python&file=main.py&code=...&cmd=...&stdin=...
  // One snippet, its Run button and its output: a widget for a course page's iframe.
  async function startEmbed() {
    document.body.classList.add("embed");
    for (const id of ["bar", "history", "tabs", "more", "image-about"]) $(id).classList.add("embed-hide");
    $("file-add").parentElement.classList.add("embed-hide");
    $("image").closest(".row").classList.add("embed-hide");
    const p = fragmentParams();
    state.auth = { app: p.get("app") || "", secret: p.get("key") || "" };
    $("main").hidden = false;
    try {
      if (!state.auth.app || !state.auth.secret) throw new ApiError("This widget needs app= and key= in its URL's fragment (#app=...&key=...)");
      const name = p.get("image") || "python";
      const image = await api("api/images/" + encodeURIComponent(name));
      state.images = [image];
      chooseImage(image.name, true);
      if (p.has("file")) state.files[0].name = p.get("file");
      if (p.has("code")) state.files[0].content = p.get("code");
      $("cmd").value = p.get("cmd") || commandFor(image, state.files[0].name);
      $("stdin").value = p.get("stdin") || "";
      renderFiles();
    } catch (e) {
      showError(e);
      $("run").disabled = true;
    }
    ready();
  }

  // ---- wiring --------------------------------------------------------------------

  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => { signOut(); showError(null); $("app-id").focus(); });
  $("image").addEventListener("change", (e) => { saveEditor(); chooseImage(e.target.value, false); });
  $("code").addEventListener("input", () => { state.pristine = false; });
  $("file-add").addEventListener("click", addFile);
  $("file-rename").addEventListener("click", renameFile);
  $("file-delete").addEventListener("click", deleteFile);
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancel);
  $("history-toggle").addEventListener("click", () => { $("history").scrollIntoView(); $("history-refresh").focus(); });
  $("history-refresh").addEventListener("click", () => showHistory(true));
  $("history-more").addEventListener("click", () => showHistory(false));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("main").hidden) {
      e.preventDefault();
      run();
    }
  });
  start();
})();
