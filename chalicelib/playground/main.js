// Signing in, embed mode, and the wiring of buttons and keys; it starts the page.

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
