// Running: the request, the live tail, cancelling, and the result.

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
// The live pane keeps the last PANE_CHARS of the output: a program may write megabytes, and the
// page never holds them all (the downloads have the whole).
function appendOutput(out, text) {
  out.appendChild(document.createTextNode(text));
  let over = out.textContent.length - PANE_CHARS;
  if (over <= 0) return;
  $("output-cut").hidden = false;
  while (over > 0 && out.firstChild) {
    const first = out.firstChild;
    if (first.nodeType === Node.TEXT_NODE && first.data.length > over) {
      first.data = first.data.slice(over);
      return;
    }
    over -= first.textContent.length;
    out.removeChild(first);
  }
}

// A run under way outlives a passing fault: a 503 (the API's "try again shortly") or no answer
// at all is tried again, up to 5 times a second or more apart; any other error is the API's word.
async function again(call) {
  for (let tries = 1; ; tries++) {
    try {
      return await call();
    } catch (e) {
      if (tries >= 5 || (e.status !== undefined && e.status !== 503)) throw e;
      await new Promise((resolve) => setTimeout(resolve, 1000 * tries));
    }
  }
}

async function follow(id) {
  let offset = 0;
  const out = $("output");
  let looked = 0;
  for (;;) {
    const part = await again(() => api("api/sandboxes/" + id + "/logs?offset=" + offset + "&wait=20"));
    if (part.data) {
      appendOutput(out, part.data);
      out.scrollTop = out.scrollHeight;
    }
    offset = part.next;
    if (part.done) return;
    if (++looked % 3 === 0 || !part.data) {
      const now = await again(() => api("api/sandboxes/" + id));
      setStatus(now.status, id);
    } else if ($("status").dataset.status === "queued") {
      setStatus("running", id);
    }
  }
}

async function settled(id) {
  for (;;) {
    const sandbox = await again(() => api("api/sandboxes/" + id + "?wait=20"));
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
  $("output-cut").hidden = true;
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
