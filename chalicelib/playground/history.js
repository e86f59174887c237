// History: the app's sandboxes, a page at a time, each reopened into the editor.

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
