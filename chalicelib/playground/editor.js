// The editor: the image, its files (add, rename, delete), the hello world and the command.

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
