"""Download an archive the way torchvision does (md5-checked) and extract it only inside its destination.

torchvision's extract_archive calls `tarfile.extractall` with no filter, so a crafted archive could write
`../../.bashrc`, an absolute path, or a symlink that leads elsewhere. Here every member is checked before
anything is written: a member whose path or link target leaves the destination, or a device/fifo, refuses
the whole archive with one line naming it. Tar members are then extracted with Python's "data" filter as
well, which also re-checks paths against links created earlier in the same archive.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse
from urllib.request import url2pathname

from cnnlab.errors import CnnlabError


def download_and_extract(url: str, dest: Path, *, filename: str | None = None, md5: str | None = None) -> None:
    """Fetch `url` (torchvision's download_url: redirects, Google Drive, md5 check; a file:// URL is copied) and
    extract it into `dest`, atomically: the archive is fetched and extracted in a temp dir beside `dest`, and
    only a complete extraction is moved into place (`dest` itself with one os.rename when it does not exist
    yet, else each top-level entry). A failed or killed download or extraction leaves `dest` as it was, so a
    rerun never trains on half an archive; the archive itself is not kept."""
    from torchvision.datasets.utils import check_integrity, download_url

    dest = Path(dest)
    filename = filename or os.path.basename(urlparse(url).path) or "download"
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    try:
        archive = work / filename
        if urlparse(url).scheme == "file":
            shutil.copyfile(url2pathname(urlparse(url).path), archive)
            if md5 and not check_integrity(str(archive), md5):
                raise CnnlabError(f"{url} does not have the expected md5 {md5}")
        else:
            download_url(url, str(work), filename, md5)
        content = work / "content"
        extract(archive, content)
        _move_into(content, dest, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _move_into(content: Path, dest: Path, work: Path) -> None:
    """Rename the complete extraction into place; an entry already there (an incomplete earlier copy, since the
    caller found files missing) is moved aside into `work` first and removed with it."""
    if not dest.exists():
        os.rename(content, dest)
        return
    for entry in sorted(content.iterdir()):
        target = dest / entry.name
        if target.exists() or target.is_symlink():
            os.rename(target, work / f"replaced-{entry.name}")
        os.rename(entry, target)


def _escapes(name: str) -> bool:
    """A member path that is absolute (POSIX or Windows style) or climbs out with `..`."""
    path = name.replace("\\", "/")
    return path.startswith("/") or (len(path) > 1 and path[1] == ":") or ".." in PurePosixPath(path).parts


def _inside(dest: Path, relative: str) -> bool:
    """dest/relative stays in dest, following links already on disk (dest is resolved)."""
    target = Path(os.path.realpath(dest / relative))
    return target == dest or dest in target.parents


def _refuse(archive: Path, member: str, why: str) -> CnnlabError:
    return CnnlabError(f"{archive}: refused to extract it, member {member!r} {why}; nothing was extracted")


def _check_space(archive: Path, dest: Path, total: int) -> None:
    free = shutil.disk_usage(dest).free
    if total > free:
        raise CnnlabError(
            f"{archive} unpacks to {total / 1e9:.2f} GB but {dest} has {free / 1e9:.2f} GB free; "
            "free some space or point data.root elsewhere"
        )


def _tar_members(archive: Path, tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        if _escapes(m.name) or not _inside(dest, m.name):
            raise _refuse(archive, m.name, "would be written outside the destination")
        if m.issym():  # a relative target is resolved from the link's own folder
            link = m.linkname.replace("\\", "/")
            if (
                link.startswith("/")
                or (len(link) > 1 and link[1] == ":")
                or not _inside(dest, os.path.join(os.path.dirname(m.name), link))
            ):
                raise _refuse(archive, m.name, f"is a symlink to {link!r}, outside the destination")
        elif m.islnk():
            if _escapes(m.linkname) or not _inside(dest, m.linkname):
                raise _refuse(archive, m.name, f"is a hard link to {m.linkname!r}, outside the destination")
        elif not (m.isfile() or m.isdir()):
            raise _refuse(archive, m.name, "is a device or fifo, which a dataset never holds")
    _check_space(archive, dest, sum(m.size for m in members if m.isfile()))
    return members


def _zip_members(archive: Path, zf: zipfile.ZipFile, dest: Path) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for m in members:
        if _escapes(m.filename) or not _inside(dest, m.filename):
            raise _refuse(archive, m.filename, "would be written outside the destination")
    _check_space(archive, dest, sum(m.file_size for m in members))
    return members


def extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) archive into `dest`, after checking every member (see module doc)."""
    archive, dest = Path(archive), Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest, members=_zip_members(archive, zf, dest))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                members = _tar_members(archive, tar, dest)
                # Python >= 3.10.12 / 3.11.4: the "data" filter also catches escapes through links made earlier
                options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(dest, members=members, **options)
        else:
            raise CnnlabError(f"{archive} is not a zip or tar archive; delete it and download it again")
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as ex:  # FilterError is a TarError
        detail = " ".join(str(ex).split())
        raise CnnlabError(f"{archive} could not be extracted into {dest} ({type(ex).__name__}: {detail})") from None
