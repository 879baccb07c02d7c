"""A small stand-in for the Hugging Face Hub's HTTP API, on 127.0.0.1, for the push tests.

It implements what ``huggingface_hub.HfApi`` (2.x) calls to publish files, as read from the
client's source: ``POST /api/repos/create``, ``GET /api/{type}s/{id}`` (repo info),
``POST /api/{type}s/{id}/branch/{branch}``, ``POST /api/validate-yaml``,
``POST /api/{type}s/{id}/preupload/{rev}``, the LFS batch API
``POST /[datasets/]{id}.git/info/lfs/objects/batch`` with a basic-transfer ``PUT`` and a
verify ``POST``, and ``POST /api/{type}s/{id}/commit/{rev}`` (NDJSON). Files whose names end
in ``LFS_SUFFIXES`` are answered "lfs" by the pre-upload, the rest "regular" (base64 inside
the commit); the client must run with Xet disabled (``HF_HUB_DISABLE_XET=1``) to take the LFS
path. Everything received is recorded; ``fail(endpoint, status, message)`` makes an endpoint
answer an error instead, and repos in another user's namespace answer 403 to writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".png", ".parquet", ".pt")
# A few of the Hub's license ids: enough to answer an unknown one with the Hub's 400.
LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "llama3.1", "other", "unknown"}
REPO = r"(?P<type>model|dataset)s/(?P<repo>[^/]+/[^/]+)"


@dataclass
class Request:
    method: str
    path: str
    endpoint: str
    authorization: str | None
    body: bytes


@dataclass
class Commit:
    revision: str
    summary: str
    description: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    owner: str
    private: bool
    branches: set[str] = field(default_factory=lambda: {"main"})
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)


class FakeHub:
    """The fake Hub's state; ``start()`` serves it on an ephemeral port, ``stop()`` ends it."""

    def __init__(self, token: str = "hf_fakeTokenForTestsOnly0000000000000", user: str = "alice"):
        self.token = token
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self.lfs_objects: dict[str, bytes] = {}
        self.validated_yaml: list[dict] = []
        self.failures: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------- control
    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None

    def fail(self, endpoint: str, status: int, message: str) -> None:
        self.failures[endpoint] = (status, message)

    def add_repo(self, repo_id: str, owner: str, repo_type: str = "model") -> Repo:
        repo = Repo(repo_type, repo_id, owner, private=False)
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def called(self, endpoint: str) -> list[Request]:
        return [r for r in self.requests if r.endpoint == endpoint]

    # ------------------------------------------------------------------- routing
    ROUTES = (
        ("POST", r"/api/repos/create", "create_repo"),
        ("GET", rf"/api/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("POST", rf"/api/{REPO}/branch/(?P<rev>[^/]+)", "create_branch"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", rf"/api/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", r"/(?:(?P<type>dataset)s/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch",
         "lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
        ("POST", r"/lfs-verify", "lfs_verify"),
        ("POST", rf"/api/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    )

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, dict]:
        """Returns (status, JSON body, extra headers)."""
        for route_method, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                break
        else:
            return 404, {"error": f"no route for {method} {path}"}, {}
        with self._lock:
            self.requests.append(Request(method, path, name, headers.get("Authorization"), body))
            if name != "lfs_upload" and headers.get("Authorization") != f"Bearer {self.token}":
                message = "Invalid credentials in Authorization header"
                return 401, {"error": message}, {"X-Error-Message": message}
            if name in self.failures:
                status, message = self.failures[name]
                return status, {"error": message}, {"X-Error-Message": message}
            args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            return getattr(self, f"_{name}")(body=body, **args)

    def _writable(self, repo_type: str, repo_id: str) -> tuple[int, dict, dict] | Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if repo.owner != self.user:
            message = f"You don't have write access to {repo_id}"
            return 403, {"error": message}, {"X-Error-Message": message}
        return repo

    # ----------------------------------------------------------------- endpoints
    def _create_repo(self, body: bytes) -> tuple[int, dict, dict]:
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.user
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        if namespace != self.user:
            message = f"You don't have the rights to create a {repo_type} under this namespace"
            return 403, {"error": message}, {"X-Error-Message": message}
        url = f"{self.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.repos:  # the Hub names the existing repo's URL
            return 409, {"error": f"You already created this {repo_type} repo", "url": url}, {}
        repo = Repo(repo_type, repo_id, self.user, private=payload.get("visibility") == "private")
        self.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id}, {}

    def _repo_info(self, body: bytes, type: str, repo: str, rev: str = "main"):
        found = self.repos.get((type, repo))
        if found is None or (found.private and found.owner != self.user):
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        return 200, {"id": repo, "private": found.private, "sha": "0" * 40}, {}

    def _create_branch(self, body: bytes, type: str, repo: str, rev: str):
        found = self._writable(type, repo)
        if not isinstance(found, Repo):
            return found
        if rev in found.branches:
            return 409, {"error": "Reference already exists"}, {}
        found.branches.add(rev)
        return 200, {}, {}

    def _validate_yaml(self, body: bytes) -> tuple[int, dict, dict]:
        payload = json.loads(body)
        self.validated_yaml.append(payload)
        match = re.match(r"---\n(.*?)\n---\n", payload["content"], re.DOTALL)
        if match is None:
            warning = {"message": "empty or missing yaml metadata"}
            return 200, {"errors": [], "warnings": [warning]}, {}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {exc}"}]}, {}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}, {}
        if "license" in meta and meta["license"] not in LICENSES:
            message = f'"license" must be one of the Hub\'s license ids, got {meta["license"]!r}'
            return 400, {"errors": [{"message": message}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _preupload(self, body: bytes, type: str, repo: str, rev: str):
        found = self._writable(type, repo)
        if not isinstance(found, Repo):
            return found
        files = json.loads(body)["files"]
        return 200, {"files": [
            {"path": f["path"], "shouldIgnore": False, "oid": None,
             "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular"}
            for f in files
        ]}, {}  # fmt: skip

    def _lfs_batch(self, body: bytes, repo: str, type: str = "model"):
        found = self._writable(type, repo)
        if not isinstance(found, Repo):
            return found
        payload = json.loads(body)
        objects = [{
            "oid": obj["oid"], "size": obj["size"],
            "actions": {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}", "header": {}},
                        "verify": {"href": f"{self.url}/lfs-verify", "header": {}}},
        } for obj in payload["objects"]]  # fmt: skip
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_upload(self, body: bytes, oid: str):
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "sha256 mismatch"}, {}
        self.lfs_objects[oid] = body
        return 200, {}, {}

    def _lfs_verify(self, body: bytes):
        payload = json.loads(body)
        stored = self.lfs_objects.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            return 404, {"error": "object not uploaded"}, {}
        return 200, {}, {}

    def _commit(self, body: bytes, type: str, repo: str, rev: str):
        found = self._writable(type, repo)
        if not isinstance(found, Repo):
            return found
        if rev not in found.branches:
            return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        files: dict[str, bytes] = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 400, {"error": f"LFS object {value['oid']} not uploaded"}, {}
                files[value["path"]] = self.lfs_objects[value["oid"]]
            else:
                return 400, {"error": f"unexpected operation {line['key']}"}, {}
        found.commits.append(Commit(rev, header["summary"], header.get("description", ""), files))
        found.files.update(files)
        oid = hashlib.sha1(body).hexdigest()
        prefix = "" if type == "model" else f"{type}s/"
        return 200, {"commitUrl": f"{self.url}/{prefix}{repo}/commit/{oid}", "commitOid": oid}, {}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    timeout = 10  # seconds a connection may stay silent

    def log_message(self, format: str, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        body = self._body()
        status, payload, headers = self.fake.handle(
            self.command, urlsplit(self.path).path, self.headers, body
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _serve
