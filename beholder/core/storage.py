"""Where files live: a local folder or an ``s3://bucket/prefix``, behind one small interface.

A :class:`Store` is picklable and safe to hand to DataLoader workers: each process creates its own
boto3 client on first use (boto3 clients must not cross a fork).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import os
import secrets
import socket
import stat
import tempfile
import time
from contextlib import contextmanager

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError
from urllib3.exceptions import ProtocolError

from beholder.core.errors import UserError

S3_PREFIX = "s3://"
READ_LIMIT = 1 << 30  # a local file larger than this is no photo, sidecar or table beholder reads
TEMPORARY = ".beholder-tmp-"  # what an atomic write leaves behind only when the process is killed
STALE_AFTER_S = 24 * 3600
ANYTHING = object()  # write_local_with's expect: whatever the file holds
_BODY_RETRIES = 5
_CUT_SHORT = (IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ConnectionClosedError, ProtocolError)
_S3_RETRIES = Config(retries={"max_attempts": 10, "mode": "standard"}, connect_timeout=10, read_timeout=60, max_pool_connections=32)


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    bucket, _, key = str(uri)[len(S3_PREFIX):].partition("/")
    if not bucket:
        raise UserError(f"S3 URI without a bucket: {uri!r}")
    return bucket, key


def check_uri(uri: str, option: str) -> str:
    """A local path or s3:// URI, ``~`` expanded; any other scheme is refused naming ``option``."""
    uri = str(uri)
    if "://" in uri and not is_s3(uri):
        scheme = uri.split("://", 1)[0]
        raise UserError(f"{option}={uri!r}: unknown URI scheme {scheme!r} (use a local path or s3://bucket/prefix)")
    return uri if is_s3(uri) else os.path.expanduser(uri)


def join(root: str, relative: str) -> str:
    if is_s3(root):
        return root.rstrip("/") + "/" + relative.lstrip("/")
    return os.path.join(root, relative)


def relative_key(relative: str) -> str | None:
    """A path read from a file (a scores.csv row, a review database, a catalogue) as the gallery key
    it names: ``/``-separated, without ``.`` or empty parts (``./a.jpg`` and ``sub//a.jpg`` name
    ``a.jpg`` and ``sub/a.jpg``); None when it is absolute, names a drive, or climbs out with ``..``."""
    text = str(relative)
    parts = text.replace("\\", "/").split("/")
    if not text or os.path.isabs(text) or text.startswith("\\") or os.path.splitdrive(text)[0] or ".." in parts:
        return None
    key = "/".join(part for part in text.split("/") if part not in ("", "."))
    return key or None


def inside(root: str, relative: str) -> str | None:
    """``relative`` joined onto ``root``, or None when it would leave ``root`` (an absolute path, a
    drive, or ``..`` climbing out): paths read from a file never name a place outside the folder given."""
    key = relative_key(relative)
    return None if key is None else join(root, key)


def within(root: str, path: str) -> bool:
    """Whether local ``path`` is really inside folder ``root``, links followed: a sub-folder that is a
    link to another drive or library is not (what beholder writes stays in the folder named)."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


class UnreadableFile(OSError):
    """A local path that is not a regular file (a FIFO, a device, a folder) or is larger than asked
    for: ``path: why``, with ``strerror`` the why alone."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.strerror = why


@contextmanager
def regular_file(path: str):
    """An open descriptor of ``path`` and its size, if it is a regular file: a FIFO or a device is
    refused before it is read (it is opened without blocking), so a named pipe cannot hang a run
    nor /dev/zero fill memory."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(path, "not a regular file")
        yield fd, info.st_size
    finally:
        os.close(fd)


def read_local_file(path: str, limit: int = READ_LIMIT) -> bytes:
    """A regular file's bytes, at most ``limit`` of them (:func:`regular_file`)."""
    with regular_file(path) as (fd, size):
        if size > limit:
            raise UnreadableFile(path, f"{size} bytes, more than the {limit} read here")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(path, f"more than the {limit} bytes read here")
    return data


class Store:
    """Reads, lists and writes local paths and S3 URIs.

    ``endpoint_url`` points boto3 at an S3-compatible store (boto3 also honours
    ``AWS_ENDPOINT_URL``); credentials come from boto3's usual chain. With ``cache_dir``, S3
    objects are kept on local disk after the first read, so later epochs do not download again.
    """

    def __init__(self, endpoint_url: str | None = None, cache_dir: str | None = None):
        self.endpoint_url = endpoint_url or None
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else None
        self._client = None
        self._client_pid = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_client_pid": None}

    @property
    def s3(self):
        if self._client is None or self._client_pid != os.getpid():
            self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=_S3_RETRIES)
            self._client_pid = os.getpid()
        return self._client

    def read(self, uri: str) -> bytes:
        if not is_s3(uri):
            return read_local_file(uri)
        bucket, key = split_s3(uri)
        cached = os.path.join(self.cache_dir, bucket, key) if self.cache_dir else None
        if cached and os.path.exists(cached):
            return read_local_file(cached)
        data = self._download(bucket, key, uri)
        if cached:
            write_local_atomically(cached, data)
        return data

    def _download(self, bucket: str, key: str, uri: str) -> bytes:
        """botocore retries failed requests itself, but not a body cut off mid-download: that is
        retried here."""
        for attempt in range(_BODY_RETRIES + 1):
            try:
                return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as error:
                if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    raise FileNotFoundError(uri) from None
                raise
            except _CUT_SHORT:
                if attempt == _BODY_RETRIES:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def list(self, root: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Paths under ``root`` relative to it, sorted; only those ending in ``suffixes`` (any case)."""
        return list(self.versions(root, suffixes))

    def versions(self, root: str, suffixes: tuple[str, ...] | None = None, ignored: dict[str, list[str]] | None = None) -> dict[str, str]:
        """Like :meth:`list`, each path with its version: ``size:mtime_ns`` for a local file,
        ``size:ETag`` for an S3 object. A file that changes gets another version. ``ignored``
        gathers what is left out, by why: other file types (hidden files and sidecars aside),
        dangling links, and names that are not UTF-8 (no table or sidecar could name them)."""
        ignored = {} if ignored is None else ignored
        if is_s3(root):
            bucket, prefix = split_s3(root)
            prefix = prefix.rstrip("/") + "/" if prefix else ""
            found = {}
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                found.update({obj["Key"][len(prefix):]: f"{obj['Size']}:{obj['ETag'].strip(chr(34))}" for obj in page.get("Contents", [])})
        else:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"no such folder: {root}")
            found = {}
            for name in local_files(root):
                if not utf8(name):
                    ignored.setdefault("names not UTF-8", []).append(name)
                    continue
                try:
                    info = os.stat(os.path.join(root, name))
                except OSError:
                    ignored.setdefault("dangling links", []).append(name)
                    continue
                found[name] = f"{info.st_size}:{info.st_mtime_ns}"
        if suffixes:
            others = [n for n in found if not n.lower().endswith(suffixes)]
            ignored_types = [n for n in others if not os.path.basename(n).startswith(".") and not n.lower().endswith(".xmp")]
            if ignored_types:
                ignored.setdefault("other file types", []).extend(ignored_types)
            found = {n: v for n, v in found.items() if n.lower().endswith(suffixes)}
        return dict(sorted(found.items()))

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return os.path.exists(uri)
        bucket, key = split_s3(uri)
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.delete_object(Bucket=bucket, Key=key)
        elif os.path.exists(uri):
            os.remove(uri)

    def delete_many(self, uris: list[str]) -> None:
        """Like :meth:`delete` for each (S3 objects of one bucket, a thousand to a request)."""
        objects = [split_s3(uri) for uri in uris if is_s3(uri)]
        for start in range(0, len(objects), 1000):
            chunk = objects[start:start + 1000]
            self.s3.delete_objects(Bucket=chunk[0][0], Delete={"Objects": [{"Key": key} for _, key in chunk], "Quiet": True})
        for uri in uris:
            if not is_s3(uri):
                self.delete(uri)

    def write(self, uri: str, data: bytes, expect=ANYTHING) -> None:
        """Whole-or-nothing: a reader never sees a half-written file. ``expect`` (local files): what
        the file must still hold, None for no file (:func:`write_local_with`)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)
        else:
            write_local_atomically(uri, data, expect)

    def write_with(self, uri: str, fill) -> None:
        """:meth:`write` of what ``fill(file)`` writes into a binary file, for a result too large to
        hold in memory at once: a local file is written in place of a temporary one, an S3 object is
        uploaded from one on local disk (in parts, as boto3 does for large files)."""
        if not is_s3(uri):
            write_local_with(uri, fill)
            return
        bucket, key = split_s3(uri)
        with tempfile.TemporaryFile() as f:
            fill(f)
            f.seek(0)
            self.s3.upload_fileobj(f, bucket, key)


@contextmanager
def open_text(path: str):
    """A local UTF-8 text file to read a line at a time, whatever its size (undecodable bytes
    replaced; ``newline=""`` for the csv module); a FIFO or a device refused (:func:`regular_file`)."""
    with regular_file(path) as (fd, _), open(fd, encoding="utf-8", errors="replace", newline="", closefd=False) as f:
        yield f


def text_file(data: bytes) -> io.TextIOWrapper:
    """``data`` (an S3 object's) as :func:`open_text` opens a file."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline="")


def utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def local_files(root: str) -> list[str]:
    """Files under ``root`` relative to it, through symlinked folders too (each real folder once,
    so a link cycle ends)."""
    names, visited = [], set()
    for folder, folders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            folders[:] = []
            continue
        visited.add(real)
        names += [os.path.relpath(os.path.join(folder, name), root) for name in files]
    return names


def write_local_atomically(path: str, data: bytes, expect=ANYTHING) -> None:
    write_local_with(path, lambda f: f.write(data), expect)


class ChangedMeanwhile(OSError):
    """Another program wrote the file between beholder's read of it and its write."""


def write_local_with(path: str, fill, expect=ANYTHING):
    """``fill(file)`` writes a temporary file beside ``path``, which then replaces ``path`` whole
    (a reader never sees half a file; on failure nothing is left). A file replaced keeps its
    permissions (and owner, where allowed); a new one gets the umask's. Returns what ``fill`` returns.

    ``expect``: the bytes ``path`` must still hold (None: no file there), checked as it is replaced
    (:func:`replace_if_unchanged`); else :class:`ChangedMeanwhile` and the file stays as the other
    program left it. A merge into a file that another
    program (the photographer's editor) may write at the same moment reads, merges and writes with
    this, and merges again when it fails, so that no edit made meanwhile is undone. A new file is
    linked into place, never over one that appeared meanwhile."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        before = os.stat(path)
    except FileNotFoundError:
        before = None
    name = f"{TEMPORARY}{_host()}-{os.getpid()}-{secrets.token_hex(4)}-{os.path.basename(path)}"
    tmp = os.path.join(folder, name[:255])  # the longest name a file system takes
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "w+b") as f:
            result = fill(f)
        if before is not None:
            os.chmod(tmp, stat.S_IMODE(before.st_mode))
            try:
                os.chown(tmp, before.st_uid, before.st_gid)
            except OSError:  # only root may give a file away: it stays the writer's
                pass
        if expect is None:
            try:
                os.link(tmp, path)  # fails if a file appeared meanwhile
            except FileExistsError:
                raise ChangedMeanwhile(errno.EEXIST, "created by another program meanwhile", path) from None
            except OSError:  # a file system without hard links (exFAT, some network shares): checked, then moved
                if os.path.lexists(path):
                    raise ChangedMeanwhile(errno.EEXIST, "created by another program meanwhile", path) from None
                os.replace(tmp, path)
            else:
                os.remove(tmp)
        elif expect is ANYTHING:
            os.replace(tmp, path)
        else:
            replace_if_unchanged(tmp, path, expect)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return result


def replace_if_unchanged(tmp: str, path: str, expect: bytes) -> None:
    """``tmp`` moved over ``path`` if ``path`` still holds ``expect``; else :class:`ChangedMeanwhile`,
    with ``path`` as the other program left it.

    Where the file system can swap two names in one step (Linux's ``renameat2(RENAME_EXCHANGE)``:
    ext4, btrfs, xfs, tmpfs), the swap hands back exactly the file that was replaced, so an edit saved
    between beholder's read and its write is found and put back, and so is any edit saved while it is
    put back. Elsewhere the file is compared just before it is replaced, which leaves a window of
    microseconds."""
    ours = os.stat(tmp).st_ino
    try:
        swapped = exchange(tmp, path)
    except FileNotFoundError:
        raise ChangedMeanwhile(errno.ENOENT, "removed by another program meanwhile", path) from None
    if not swapped:
        if current_bytes(path) != expect:
            raise ChangedMeanwhile(errno.EAGAIN, "changed by another program meanwhile", path)
        os.replace(tmp, path)
        return
    if current_bytes(tmp) == expect:  # what was replaced is what was read
        os.remove(tmp)
        return
    # An edit was saved meanwhile and now lies at tmp: swap it back. What comes out must be what was
    # put in last; a newer save that comes out instead goes back in, until none does.
    at_path, wanted = ours, os.stat(tmp).st_ino
    for _ in range(1000):
        exchange(tmp, path)
        out = os.stat(tmp).st_ino
        if out == at_path:
            break
        at_path, wanted = wanted, out
    os.remove(tmp)
    raise ChangedMeanwhile(errno.EAGAIN, "changed by another program meanwhile", path)


RENAME_EXCHANGE, AT_FDCWD = 2, -100


def exchange(first: str, second: str) -> bool:
    """Swap two existing local files' names in one step; False where the system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), second)


def current_bytes(path: str) -> bytes | None:
    try:
        return read_local_file(path)
    except FileNotFoundError:
        return None


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def remove_stale_temporaries(folder: str) -> int:
    """Remove what killed writes (``kill -9``, a power cut) left in ``folder``: beholder's temporary
    files of a process of this machine that is gone, or older than a day. Returns how many."""
    removed = 0
    try:
        entries = [entry for entry in os.scandir(folder) if entry.name.startswith(TEMPORARY)]
    except OSError:
        return 0
    for entry in entries:
        host, _, rest = entry.name[len(TEMPORARY):].partition("-")
        pid = rest.partition("-")[0]
        try:
            old = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            if old or (host == _host() and pid.isdigit() and not _running(int(pid))):
                os.remove(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Busy(UserError):
    """Another process holds the lock on what this one was about to write."""


@contextmanager
def exclusive_lock(path: str, what: str):
    """An exclusive lock on local file ``path``, held inside the block (and dropped by the system
    when the process dies, so a killed run never leaves it taken). Another holder: :class:`Busy`,
    naming ``what`` and who holds it. A file system without locks (some network shares) runs unlocked."""
    import fcntl  # POSIX only: imported where it is used

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise Busy(f"{what} is in use by another beholder run ({holder}); wait for it to finish, or give another folder") from None
        except OSError:
            pass
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


def file_digest(path: str) -> str:
    """sha256 of a local file, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
