"""Small helpers shared across the package."""
import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_folder(folder):
    """Yield a temporary folder beside ``folder``; on success it replaces ``folder`` (whose old content is removed),
    on any error it is deleted: readers never see a half-written folder."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``, on any error it is deleted:
    readers never see a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
