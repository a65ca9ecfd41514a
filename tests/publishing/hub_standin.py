"""TEST STAND-IN for the Hugging Face Hub HTTP API. Not the Hub, not a mock of its behaviour beyond what tests need.

A tiny in-memory server on 127.0.0.1 implementing just the endpoints that ``datasets``' ``push_to_hub``,
``DatasetCard.load`` and ``HfApi.create_commit`` call (huggingface_hub 2.x, ``HF_HUB_DISABLE_XET=1``):

    GET  /api/datasets/{repo}[/revision/{rev}]      repo info (``expand=cardData``: the README metadata)
    POST /api/repos/create                          create repo (initial commit with .gitattributes)
    POST /api/datasets/{repo}/branch/{branch}       create branch (from main, or ``startingPoint``)
    POST /api/validate-yaml                         README metadata check (YAML must parse)
    POST /api/datasets/{repo}/preupload/{rev}       .parquet/.png are "lfs", other files "regular" (inline)
    POST /datasets/{repo}.git/info/lfs/objects/batch  LFS upload instructions: PUT to /lfs-standin/{sha256}
    PUT  /lfs-standin/{sha256}                      LFS blob upload (single part)
    POST /api/datasets/{repo}/commit/{rev}          NDJSON commit, ``create_pr=1`` opens refs/pr/N
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]   folder listing (HfFileSystem.glob)
    HEAD/GET /datasets/{repo}/resolve/{rev}/{path}  file metadata and bytes (Range: HfFileSystem reads)
    GET  /api/agent-harnesses                       404 (an optional registry huggingface_hub tolerates missing)

Everything it receives is recorded on the ``HubStandIn`` object (``requests``, ``commits``,
``authorizations``, ``unhandled``) so tests can assert what a publish sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_BRANCH = "main"
LFS_SUFFIXES = (".parquet", ".png")


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]  # the whole tree: path -> content
    summary: str
    description: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        return self.commits.get(revision)


class HubStandIn:
    """In-memory Hub stand-in serving on ``self.endpoint`` until ``close()``; use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []  # "METHOD /path?query"
        self.authorizations: list[str] = []  # Authorization headers received
        self.commits: list[dict] = []  # one per commit received, see apply_commit
        self.unhandled: list[str] = []
        self.lfs_blobs: dict[str, bytes] = {}  # sha256 -> content
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- state changes ----------------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, private: bool = False, files: dict[str, bytes] | None = None) -> Repo:
        """Create a repo whose main branch holds ``.gitattributes`` plus ``files`` (a pre-existing source)."""
        repo = Repo(repo_id=repo_id, private=private)
        initial = {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n", **(files or {})}
        oid = self._new_commit(repo, initial, "initial commit", "")
        repo.refs[DEFAULT_BRANCH] = oid
        self.repos[repo_id] = repo
        return repo

    def _new_commit(self, repo: Repo, files: dict[str, bytes], summary: str, description: str) -> str:
        oid = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        repo.commits[oid] = Commit(oid, files, summary, description)
        return oid

    def apply_commit(self, repo: Repo, revision: str, create_pr: bool, lines: list[dict]) -> tuple[int, dict]:
        """Apply an NDJSON commit to ``revision`` (or open a PR from it); returns (HTTP status, JSON answer)."""
        header = lines[0]["value"]
        base = repo.resolve(revision)
        if base is None:
            return 404, {"error": f"revision {revision} not found"}
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            return 412, {"error": "parent commit is not the head of the revision"}
        files = dict(base.files)
        added, deleted = [], []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_blobs:
                    return 400, {"error": f"LFS object {value['oid']} was never uploaded"}
                files[value["path"]] = self.lfs_blobs[value["oid"]]
                added.append(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
                deleted.append(value["path"])
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    files.pop(path)
                    deleted.append(path)
            else:
                return 400, {"error": f"stand-in does not support {key}"}
        oid = self._new_commit(repo, files, header["summary"], header.get("description", ""))
        target = revision
        if create_pr:
            target = f"refs/pr/{1 + sum(ref.startswith('refs/pr/') for ref in repo.refs)}"
        repo.refs[target] = oid
        self.commits.append({"repo_id": repo.repo_id, "revision": target, "oid": oid, "parent": base.oid,
                             "summary": header["summary"], "description": header.get("description", ""),
                             "files": added, "deleted": deleted, "pr": create_pr})
        url = f"{self.endpoint}/datasets/{repo.repo_id}"
        answer = {"commitOid": oid, "commitUrl": f"{url}/commit/{oid}", "pullRequestUrl": None}
        if create_pr:
            answer["pullRequestUrl"] = f"{url}/discussions/{target.rsplit('/', 1)[1]}"
        return 200, answer


def _tree_entries(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict] | None:
    """Hub tree listing of ``folder`` (``""`` = root); None when the folder does not exist."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    entries: dict[str, dict] = {}
    for path, content in files.items():
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):].split("/")
        for depth in range(1, len(rest)):
            sub = prefix + "/".join(rest[:depth])
            if recursive or depth == 1:
                entries[sub] = {"type": "directory", "path": sub, "oid": git_blob_sha(sub.encode())}
        if recursive or len(rest) == 1:
            entries[path] = {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)}
    if folder and not entries:
        return None
    return list(entries.values())


def _make_handler(hub: HubStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        # -- plumbing ------------------------------------------------------------------------------------------
        def _reply(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None,
                   head: bool = False) -> None:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._reply(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            segments = [unquote(s) for s in url.path.split("/") if s]
            with hub.lock:
                hub.requests.append(f"{method} {self.path}")
                if self.headers.get("Authorization"):
                    hub.authorizations.append(self.headers["Authorization"])
            body = self._body() if method in ("POST", "PUT") else b""
            try:
                handled = self._dispatch(method, segments, query, body)
            except Exception as err:  # a stand-in bug must show up in the test, not hang it
                hub.unhandled.append(f"{method} {self.path}: {err!r}")
                self._reply(500, {"error": repr(err)})
                return
            if not handled:
                hub.unhandled.append(f"{method} {self.path}")
                self._error(404, "NotImplemented", f"stand-in does not implement {method} {url.path}")

        def do_GET(self) -> None:
            self._route("GET")

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        # -- endpoints -----------------------------------------------------------------------------------------
        def _repo(self, namespace: str, name: str) -> Repo | None:
            repo = hub.repos.get(f"{namespace}/{name}")
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        def _commit(self, repo: Repo, revision: str) -> Commit | None:
            commit = repo.resolve(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return commit

        def _dispatch(self, method: str, seg: list[str], query: dict, body: bytes) -> bool:
            if method == "GET" and seg == ["api", "agent-harnesses"]:
                self._error(404, "NotFound", "the stand-in has no agent registry")
                return True
            if method == "POST" and len(seg) == 7 and seg[0] == "datasets" and seg[3:] == ["info", "lfs", "objects",
                                                                                             "batch"]:
                objects = []
                for obj in json.loads(body)["objects"]:
                    if obj["oid"] not in hub.lfs_blobs:
                        obj = {**obj, "actions": {"upload": {"href": f"{hub.endpoint}/lfs-standin/{obj['oid']}"}}}
                    objects.append(obj)
                self._reply(200, {"transfer": "basic", "objects": objects})
                return True
            if method == "PUT" and len(seg) == 2 and seg[0] == "lfs-standin":
                if hashlib.sha256(body).hexdigest() != seg[1]:
                    self._error(400, "BadRequest", "sha256 of the uploaded bytes does not match the oid")
                    return True
                with hub.lock:
                    hub.lfs_blobs[seg[1]] = body
                self._reply(200, {})
                return True
            if method == "POST" and seg == ["api", "repos", "create"]:
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}"
                with hub.lock:
                    if repo_id in hub.repos:  # the Hub names the existing repo (huggingface_hub < 1.0 reads it)
                        message = "You already created this dataset repo"
                        self._reply(409, {"error": message, "url": f"{hub.endpoint}/datasets/{repo_id}"},
                                    {"X-Error-Code": "Conflict", "X-Error-Message": message})
                        return True
                    # huggingface_hub >= 1.0 sends visibility; earlier releases send private, which the Hub takes too
                    hub.create_repo(repo_id, private=payload.get("visibility") == "private" or payload.get("private") is True)
                self._reply(200, {"url": f"{hub.endpoint}/datasets/{repo_id}", "name": repo_id})
                return True
            if method == "POST" and seg == ["api", "validate-yaml"]:
                content = json.loads(body)["content"]
                match = re.match(r"^---\n(.*?)\n---", content, re.S)
                try:
                    yaml.safe_load(match.group(1) if match else "")
                except yaml.YAMLError as err:
                    self._reply(400, {"errors": [{"message": str(err)}], "warnings": []})
                    return True
                self._reply(200, {"errors": [], "warnings": []})
                return True
            if len(seg) >= 4 and seg[:2] == ["api", "datasets"]:
                repo = self._repo(seg[2], seg[3])
                if repo is None:
                    return True
                return self._repo_api(method, repo, seg[4:], query, body)
            if len(seg) >= 6 and seg[0] == "datasets" and seg[3] == "resolve" and method in ("GET", "HEAD"):
                repo = self._repo(seg[1], seg[2])
                commit = repo and self._commit(repo, seg[4])
                if commit is None:
                    return True
                path = "/".join(seg[5:])
                if path not in commit.files:
                    self._error(404, "EntryNotFound", f"{path} does not exist")
                    return True
                content = commit.files[path]
                headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha(content)}"',
                           "Accept-Ranges": "bytes"}
                status, span = 200, content
                ranged = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if ranged:
                    start = int(ranged.group(1))
                    end = int(ranged.group(2)) + 1 if ranged.group(2) else len(content)
                    if start >= len(content) and content:
                        self._reply(416, b"", {"Content-Range": f"bytes */{len(content)}"})
                        return True
                    status, span = 206, content[start:end]
                    headers["Content-Range"] = f"bytes {start}-{start + len(span) - 1}/{len(content)}"
                self._reply(status, span, headers, head=method == "HEAD")
                return True
            return False

        def _repo_api(self, method: str, repo: Repo, seg: list[str], query: dict, body: bytes) -> bool:
            if method == "GET" and (not seg or seg[0] == "revision"):
                commit = self._commit(repo, seg[1] if seg else DEFAULT_BRANCH)
                if commit is not None:
                    info = {"id": repo.repo_id, "sha": commit.oid, "private": repo.private,
                            "siblings": [{"rfilename": p} for p in sorted(commit.files)]}
                    if query.get("expand") == "cardData":
                        readme = commit.files.get("README.md", b"").decode()
                        match = re.match(r"^---\n(.*?)\n---", readme, re.S)
                        info = {"id": repo.repo_id, "cardData": yaml.safe_load(match.group(1)) if match else None}
                    self._reply(200, info)
                return True
            if method == "POST" and seg[0] == "branch":
                branch = "/".join(seg[1:])
                start = json.loads(body or b"{}").get("startingPoint", DEFAULT_BRANCH)
                with hub.lock:
                    if branch in repo.refs:
                        self._error(409, "Conflict", "Reference already exists")
                        return True
                    commit = self._commit(repo, start)
                    if commit is not None:
                        repo.refs[branch] = commit.oid
                        self._reply(200, {})
                return True
            if method == "POST" and seg[0] == "preupload":
                commit = self._commit(repo, seg[1])
                if commit is not None:
                    files = [{"path": f["path"], "shouldIgnore": False,
                              "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                              "oid": git_blob_sha(commit.files[f["path"]]) if f["path"] in commit.files else None}
                             for f in json.loads(body)["files"]]
                    self._reply(200, {"files": files, "commitOid": commit.oid})
                return True
            if method == "POST" and seg[0] == "commit":
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                with hub.lock:
                    status, answer = hub.apply_commit(repo, seg[1], query.get("create_pr") == "1", lines)
                if status == 200:
                    self._reply(200, answer)
                else:
                    self._error(status, "RevisionNotFound" if status == 404 else "Error", answer["error"])
                return True
            if method == "GET" and seg[0] == "tree":
                commit = self._commit(repo, seg[1])
                if commit is not None:
                    recursive = query.get("recursive", "").lower() == "true"
                    entries = _tree_entries(commit.files, "/".join(seg[2:]), recursive)
                    if entries is None:
                        self._error(404, "EntryNotFound", "folder does not exist")
                    else:
                        self._reply(200, entries)
                return True
            return False

    return Handler
