"""The OpenDevelop API as Python calls.

    from opendevelop import Client
    client = Client()                       # OPENDEVELOP_URL, OPENDEVELOP_APP_ID, OPENDEVELOP_SECRET
    sandbox = client.run("python main.py", files=["main.py", "data.csv"])
    print(sandbox.stdout, sandbox.return_code)

Every request has a timeout.  Answers 429 (over quota) and 503 (no server can
take work) are retried with exponential backoff, honouring ``Retry-After``:
the API stores and queues nothing when it answers either, so even a create is
safe to send again.  A failed connection is retried for reads (GET) and for
any request that never reached the server; a create or a cancel whose answer
was lost is not sent again, since it may have been carried out.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload
from urllib.parse import quote

import requests

from opendevelop import artifacts, errors
from opendevelop.files import FilesArg, collect
from opendevelop.models import Image, Sandbox

DEFAULT_URL = "http://127.0.0.1:8000"  # what `make dev` serves
MAX_LONG_POLL_S = 20  # the API holds a GET ?wait= at most this long
USER_AGENT = "opendevelop-python/1.0.0"


class Client:
    """A client of one OpenDevelop API, as one app.

    ``url``, ``app_id`` and ``secret`` default to ``OPENDEVELOP_URL`` (else
    ``http://127.0.0.1:8000``, the local stack), ``OPENDEVELOP_APP_ID`` and
    ``OPENDEVELOP_SECRET``.  ``timeout`` (seconds) bounds each request; a
    long-poll gets its wait on top.  ``retries`` is how many times a 429, a 503
    or (when safe) a failed connection is tried again, ``backoff`` the first
    pause in seconds (doubled each time, at most ``max_backoff``).
    """

    def __init__(
        self,
        url: str | None = None,
        app_id: str | None = None,
        secret: str | None = None,
        timeout: float = 30,
        *,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        session: requests.Session | None = None,
    ) -> None:
        self.url = (url or os.environ.get("OPENDEVELOP_URL") or DEFAULT_URL).rstrip("/")
        self.app_id = app_id if app_id is not None else os.environ.get("OPENDEVELOP_APP_ID", "")
        self._secret = secret if secret is not None else os.environ.get("OPENDEVELOP_SECRET", "")
        if not self.url.startswith(("http://", "https://")):
            raise errors.ConfigurationError(f"the API URL must start with http:// or https://, not {self.url!r}", "url")
        if not self.app_id:
            raise errors.ConfigurationError("no app id: pass app_id= or set OPENDEVELOP_APP_ID", "app_id")
        if not self._secret:
            raise errors.ConfigurationError("no app secret: pass secret= or set OPENDEVELOP_SECRET", "secret")
        if timeout <= 0:
            raise errors.ConfigurationError(f"timeout must be more than 0 seconds, not {timeout}", "timeout")
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._session = session or requests.Session()
        self._session.headers.setdefault("User-Agent", USER_AGENT)

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, app_id={self.app_id!r})"  # never the secret

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # The API

    @overload
    def images(self, detail: Literal[False] = False) -> list[str]: ...

    @overload
    def images(self, detail: Literal[True]) -> list[Image]: ...

    def images(self, detail: bool = False) -> list[str] | list[Image]:
        """The names of the images a sandbox may use; with ``detail=True``, the images described
        (language, version, run template, extensions: see ``Image``)."""
        if detail:
            return [Image.from_json(item) for item in self._json("GET", "/api/images", params={"detail": "true"})]
        return [str(name) for name in self._json("GET", "/api/images")]

    def image(self, name: str) -> Image:
        """One image described; ``NotFoundError`` when there is no such (enabled) image."""
        return Image.from_json(self._json("GET", f"/api/images/{quote(name, safe='')}"))

    def usage(self) -> dict[str, Any]:
        """The app's own use and quotas: ``running``, ``queued``, ``today`` (``sandboxes``,
        ``run_seconds``) and ``limits`` (``concurrency``, ``rate``, ``daily_seconds``; 0 is no limit)."""
        usage: dict[str, Any] = self._json("GET", "/api/usage")
        return usage

    def sandboxes(self, page_size: int = 100) -> Iterator[Sandbox]:
        """Every sandbox of the app, newest first, fetched a page at a time as the iteration goes."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = self._json("GET", "/api/sandboxes", params=params)
            for item in page["sandboxes"]:
                yield Sandbox.from_json(item, self)
            cursor = page.get("next")
            if not cursor:
                return

    def sandbox(self, sandbox_id: str, wait: float | None = None) -> Sandbox:
        """One sandbox.  With ``wait`` (at most 20 s) the API answers once it has finished or the time is up."""
        params = None
        if wait:
            wait = min(float(wait), MAX_LONG_POLL_S)
            params = {"wait": f"{wait:g}"}
        data = self._json("GET", f"/api/sandboxes/{_id(sandbox_id)}", params=params, extra_time=wait or 0)
        return Sandbox.from_json(data, self)

    def create(
        self,
        cmd: str | Sequence[str],
        files: FilesArg = None,
        *,
        image: str = "base",
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        network: bool | None = None,
        callback_url: str | None = None,
        **limits: float,
    ) -> Sandbox:
        """Create a sandbox and queue it; it is returned at once, usually ``queued``.

        ``cmd`` is one shell command line or a list of them (run in order, each
        only if the one before succeeded).  ``files``: see ``opendevelop.files``.
        ``timeout`` is the program's time limit in seconds; ``limits`` the others
        (``memory_mb``, ``cpus``, ``pids``, ``disk_mb``, ``output_kb``).  Anything
        left out gets the platform's default.  ``callback_url``: the platform POSTs
        the finished sandbox there, signed (check it with ``verify_webhook``).
        """
        body = self._body(cmd, files, image, timeout, stdin, env, network, callback_url, limits)
        data = self._json("POST", "/api/sandboxes", json_body=body)
        return Sandbox.from_json(data, self)

    def create_many(self, requests_: Sequence[Mapping[str, Any]]) -> list[Sandbox | errors.OpenDevelopError]:
        """Create up to 100 sandboxes in one request (``POST /api/sandboxes/batch``).

        Each item holds ``create``'s arguments as keywords (``{"cmd": ..., "files": ...,
        "timeout": ...}``).  The answer is in the same order: each a ``Sandbox``, or
        the error that item got (a ``BadRequestError``, say) -- the others were created.
        """
        items = []
        for item in requests_:
            given = dict(item)
            cmd = given.pop("cmd")
            files = given.pop("files", None)
            items.append(
                self._body(
                    cmd,
                    files,
                    image=given.pop("image", "base"),
                    timeout=given.pop("timeout", None),
                    stdin=given.pop("stdin", None),
                    env=given.pop("env", None),
                    network=given.pop("network", None),
                    callback_url=given.pop("callback_url", None),
                    limits=given,
                )
            )
        data = self._json("POST", "/api/sandboxes/batch", json_body={"sandboxes": items})
        out: list[Sandbox | errors.OpenDevelopError] = []
        for entry in data["sandboxes"]:
            if "id" not in entry and isinstance(entry.get("error"), dict):  # a sandbox's own `error` is text
                out.append(errors.from_item(entry["error"]))
            else:
                out.append(Sandbox.from_json(entry, self))
        return out

    def get_many(self, ids: Sequence[str], wait: float | None = None) -> list[Sandbox]:
        """Many sandboxes in one request (at most 100), in the order asked; ids that are not the app's are absent.

        With ``wait`` (at most 20 s) the API answers once all have finished or the time is up.
        """
        params: dict[str, Any] = {"ids": ",".join(_id(i) for i in ids)}
        extra = 0.0
        if wait:
            extra = min(float(wait), MAX_LONG_POLL_S)
            params["wait"] = f"{extra:g}"
        data = self._json("GET", "/api/sandboxes", params=params, extra_time=extra)
        return [Sandbox.from_json(item, self) for item in data["sandboxes"]]

    def _body(
        self,
        cmd: str | Sequence[str],
        files: FilesArg,
        image: str,
        timeout: float | None,
        stdin: str | bytes | None,
        env: Mapping[str, str] | None,
        network: bool | None,
        callback_url: str | None,
        limits: Mapping[str, float],
    ) -> dict[str, Any]:
        lines = [cmd] if isinstance(cmd, str) else [str(line) for line in cmd]
        body: dict[str, Any] = {"image": image, "cmd": lines}
        if timeout is not None:
            body["timeout"] = timeout
        if stdin is not None:
            body["stdin"] = stdin if isinstance(stdin, str) else _utf8(stdin, "stdin")
        if env is not None:
            body["env"] = dict(env)
        if network is not None:
            body["network"] = bool(network)
        if callback_url is not None:
            body["callback_url"] = callback_url
        body.update(limits)
        body["files"] = [_json_file(f.name, f.content, f.executable) for f in collect(files)]
        return body

    def wait(
        self,
        sandbox_id: str,
        max_wait: float | None = None,
        *,
        poll: float = MAX_LONG_POLL_S,
        on_update: Callable[[Sandbox], None] | None = None,
    ) -> Sandbox:
        """Long-poll the sandbox until it has finished; return it.

        ``max_wait`` (seconds, None for no limit) raises ``WaitTimeoutError``
        when passed.  ``on_update`` sees the sandbox after every poll.
        """
        deadline = None if max_wait is None else time.monotonic() + max_wait
        while True:
            step = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            sandbox = self.sandbox(sandbox_id, wait=step)
            if on_update is not None:
                on_update(sandbox)
            if sandbox.finished:
                return sandbox
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.WaitTimeoutError(
                    f"sandbox {sandbox_id} is still {sandbox.status} after {max_wait:g} s", sandbox
                )

    def run(
        self,
        cmd: str | Sequence[str],
        files: FilesArg = None,
        *,
        image: str = "base",
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        network: bool | None = None,
        callback_url: str | None = None,
        max_wait: float | None = None,
        on_update: Callable[[Sandbox], None] | None = None,
        **limits: float,
    ) -> Sandbox:
        """``create`` then ``wait``: the finished sandbox.  A program that fails is a result, not an exception:
        look at ``sandbox.ok``, ``return_code``, ``stderr``."""
        sandbox = self.create(
            cmd,
            files,
            image=image,
            timeout=timeout,
            stdin=stdin,
            env=env,
            network=network,
            callback_url=callback_url,
            **limits,
        )
        if on_update is not None:
            on_update(sandbox)
        return self.wait(sandbox.id, max_wait, on_update=on_update)

    def cancel(self, sandbox_id: str) -> Sandbox:
        """Cancel a sandbox that has not finished; ``ConflictError`` if it already has."""
        return Sandbox.from_json(self._json("DELETE", f"/api/sandboxes/{_id(sandbox_id)}"), self)

    def stream(self, sandbox_id: str, stream: str = "logs", offset: int = 0) -> Iterator[str]:
        """The output's text as it comes, from byte ``offset``, until the sandbox has settled.

        ``stream``: ``logs`` (stdout and stderr as they interleaved), ``stdout`` or
        ``stderr``.  Each chunk is what the program wrote since the last one
        (a long-poll of ``/logs``: a chunk comes within a second or so of the write).
        """
        while True:
            params = {"offset": offset, "wait": MAX_LONG_POLL_S, "stream": stream}
            answer = self._json(
                "GET", f"/api/sandboxes/{_id(sandbox_id)}/logs", params=params, extra_time=MAX_LONG_POLL_S
            )
            if answer.get("data"):
                yield str(answer["data"])
            offset = int(answer["next"])
            if answer.get("done"):
                return

    def output(self, sandbox_id: str, stream: str = "stdout") -> bytes:
        """``stdout`` or ``stderr``: the exact bytes the program wrote (so far, while it runs)."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        path = f"/api/sandboxes/{_id(sandbox_id)}/{stream}"
        response = self._request("GET", path, accept="application/octet-stream")
        if response.status_code in (301, 302, 303, 307, 308):
            # Stored outside the API: a short-lived URL that needs (and must get) no credentials.
            try:
                response = self._session.get(response.headers["Location"], timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                raise errors.UnreachableError(_unreachable(self.url, e)) from e
            if response.status_code >= 400:
                raise errors.from_response(response)
        return response.content

    def download(self, sandbox_id: str, folder: str | os.PathLike[str]) -> list[Path]:
        """Write the files the sandbox's program left in ``out/`` into ``folder``; the paths written.

        Read as a stream; a name that would escape ``folder`` (or a symlink in the way) is refused
        (``UnsafeArtifactError``).  ``ConflictError`` while the sandbox has not finished."""
        response = self._request("GET", f"/api/sandboxes/{_id(sandbox_id)}/artifacts", accept="application/x-tar")
        if response.status_code in (301, 302, 303, 307, 308):
            # Stored outside the API: a short-lived URL that needs (and must get) no credentials.
            try:
                response = self._session.get(response.headers["Location"], timeout=self.timeout, stream=True)
            except (requests.ConnectionError, requests.Timeout) as e:
                raise errors.UnreachableError(_unreachable(self.url, e)) from e
            if response.status_code >= 400:
                raise errors.from_response(response)
            response.raw.decode_content = True
            with response:
                return artifacts.extract(response.raw, folder)
        return artifacts.extract(io.BytesIO(response.content), folder)

    def openapi(self) -> dict[str, Any]:
        """The API's OpenAPI document."""
        document: dict[str, Any] = self._json("GET", "/api/openapi.json")
        return document

    # HTTP

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        extra_time: float = 0,
    ) -> Any:
        response = self._request(method, path, params=params, json_body=json_body, extra_time=extra_time)
        try:
            return response.json()
        except ValueError:
            raise errors.ServerError(
                f"{method} {path}: the answer is not JSON: {response.text[:200]!r}",
                status=response.status_code,
                response=response,
            ) from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        extra_time: float = 0,
        accept: str = "application/json",
    ) -> requests.Response:
        data = None
        headers = {"Accept": accept}
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                response = self._session.request(
                    method,
                    self.url + path,
                    params=params,
                    data=data,
                    headers=headers,
                    auth=(self.app_id, self._secret),
                    timeout=(self.timeout, self.timeout + extra_time),
                    allow_redirects=False,
                )
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt < self.retries and (method == "GET" or _never_sent(e)):
                    self._pause(attempt, None)
                    attempt += 1
                    continue
                raise errors.UnreachableError(_unreachable(self.url, e)) from e
            if response.status_code in (429, 503) and attempt < self.retries:
                self._pause(attempt, response.headers.get("Retry-After"))
                attempt += 1
                continue
            if response.status_code >= 400:
                raise errors.from_response(response)
            return response

    def _pause(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), 60.0))
            except ValueError:
                pass  # an HTTP date: the backoff is as good a guess
        time.sleep(delay)


def _id(sandbox_id: str) -> str:
    if not sandbox_id:
        raise ValueError("a sandbox id is required")
    return quote(str(sandbox_id), safe="")


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what}: the API takes text (UTF-8); these bytes are not") from None


def _json_file(name: str, content: bytes, executable: bool) -> dict[str, Any]:
    """Text goes as it is; anything that is not UTF-8 as base64."""
    try:
        entry: dict[str, Any] = {"name": name, "content": content.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        entry = {"name": name, "content": base64.b64encode(content).decode("ascii"), "encoding": "base64"}
    if executable:
        entry["executable"] = True
    return entry


def _never_sent(e: Exception) -> bool:
    """The connection was never made, so the request cannot have been carried out: safe to send again."""
    if isinstance(e, requests.ConnectTimeout):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return type(reason).__name__ in ("NewConnectionError", "ConnectTimeoutError", "NameResolutionError")


def _unreachable(url: str, e: Exception) -> str:
    if isinstance(e, requests.Timeout) and not isinstance(e, requests.ConnectTimeout):
        return f"the OpenDevelop API at {url} did not answer in time"
    text = str(e)
    why = "connection refused" if "refused" in text.lower() else text
    return f"cannot reach the OpenDevelop API at {url} ({why})"
