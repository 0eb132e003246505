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


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_pid_file(path):
    """Create ``path`` holding this process's pid. Returns 0 when taken, else the pid of the live process that holds
    it; a file left by a process that is gone is taken over."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                return pid
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return 0
