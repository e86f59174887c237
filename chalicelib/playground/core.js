// The playground's constants, its state and its one way to call the API: plain JavaScript, no
// library, no build step.  Every call is relative to this page's own URL, so the page works
// wherever it is served: `chalice local` at /, or API Gateway at /<stage>/.
// Part of one script: playground.py joins core, editor, run, history and main, in that order,
// inside one function, so they share these names.

const $ = (id) => document.getElementById(id);
const BASE = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const EMBED = ["1", "true", "yes"].includes((new URLSearchParams(location.search).get("embed") || "").toLowerCase());
const LIMITS = ["timeout", "memory_mb", "cpus", "pids", "disk_mb", "output_kb"];
const LIMIT_NAMES = { timeout: "timeout (s)", memory_mb: "memory (MB)", cpus: "CPUs", pids: "processes", disk_mb: "disk (MB)", output_kb: "output (KB)" };
const KEPT_RUNS = 50; // runs whose files this browser keeps (the API does not return a run's files)
const KEPT_BYTES = 256 * 1024;
const HISTORY_PAGE = 10;
const PANE_CHARS = 256 * 1024; // the most output the live pane keeps
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
    if (opts.raw) {
      // A stream stored outside the API is a redirect to storage, which the browser follows only
      // where that storage allows this page's origin.
      throw new ApiError("The download failed (" + e.message + "): if the stream is stored outside the API, its storage does not let this page read it; `curl -L` with the app's credentials fetches it");
    }
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
