"""Reading tar streams fast and safely: the members of a shard, in order, each in one read.

`tarfile`'s stream mode copies every member through 10 KB blocks, which costs more than the I/O
on a local disk; here a member's header is parsed by `tarfile.TarInfo.frombuf` and its data comes
in one `read`. Works on any readable stream (a local file, a pipe from `aws s3 cp`, an HTTP body),
understands ustar, GNU long names and pax path records, and refuses a shard whose member names are
absolute or contain `..` before yielding anything of that member. Never extracts to disk.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512


class UnsafeTarError(ValueError):
    """A tar member that would be written outside its folder: the shard is refused, not read."""


class TruncatedTarError(ValueError):
    pass


def check_member_name(name: str, shard: str = "") -> str:
    """A member name that stays inside the folder it would be extracted to, or UnsafeTarError."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise UnsafeTarError(f"{shard or 'tar'}: member {name!r} would land outside the folder (absolute or '..')")
    return name


def _read_exact(f: BinaryIO, n: int, shard: str, what: str) -> bytes:
    data = f.read(n)
    while len(data) < n:  # pipes and sockets may return less than asked
        more = f.read(n - len(data))
        if not more:
            raise TruncatedTarError(f"{shard or 'tar'}: ends inside {what} (truncated)")
        data += more
    return data


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a pax extended header, if any ("<len> path=<value>\\n" records)."""
    pos = 0
    while pos < len(data):
        length = int(data[pos : data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        pos += length
    return None


def member_key(name: str) -> tuple[str, str]:
    """webdataset's split of a member name into (sample key, extension)."""
    base = posixpath.basename(name)
    key, _, ext = base.partition(".")
    return posixpath.join(posixpath.dirname(name), key), ext


def iter_samples(f: BinaryIO, shard: str = "") -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: data}) of each sample: runs of consecutive members with one key, as
    webdataset groups them (a key that comes back later is a new sample)."""
    key, members = None, {}
    for name, data in iter_members(f, shard):
        k, ext = member_key(name)
        if k != key and key is not None:
            yield key, members
            members = {}
        key = k
        members[ext] = data
    if key is not None:
        yield key, members


def iter_members(f: BinaryIO, shard: str = "") -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file in the tar stream `f`, in archive order."""
    long_name: str | None = None
    while True:
        header = f.read(BLOCK)
        if not header or header == b"\0" * BLOCK:
            return  # end of archive (two zero blocks; a missing second one is tolerated, as tar does)
        if len(header) < BLOCK:
            header += _read_exact(f, BLOCK - len(header), shard, "a header")
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as err:
            raise TruncatedTarError(f"{shard or 'tar'}: corrupt member header: {err}") from None
        padding = -info.size % BLOCK
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE):
            data = _read_exact(f, info.size + padding, shard, "an extended header")[: info.size]
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.XHDTYPE:
                long_name = _pax_path(data)
            continue
        name = long_name or info.name
        long_name = None
        check_member_name(name, shard)
        data = _read_exact(f, info.size, shard, f"member {name!r}") if info.size else b""
        if padding:
            _read_exact(f, padding, shard, f"member {name!r}")
        if info.isreg():
            yield name, data
