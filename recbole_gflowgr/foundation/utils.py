"""Small helpers shared across the package."""
import contextlib
import os
import shutil
import tempfile
import time


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


def atomic_copy(src, dst):
    """``shutil.copyfile(src, dst)`` through :func:`atomic_file`; returns ``dst``."""
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def atomic_save(obj, path, **save_kwargs):
    """``torch.save(obj, ..., **save_kwargs)`` through :func:`atomic_file`: a kill leaves the old checkpoint or the
    new one, never a truncated one; returns ``path``."""
    import torch

    with atomic_file(path) as tmp:
        torch.save(obj, tmp, **save_kwargs)
    return path


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


@contextlib.contextmanager
def training_lock(path, poll_s=10.0):
    """One process trains a given cache entry; others wait for it (``<path>.lock`` holds the trainer's pid; a lock
    whose process is gone is taken over)."""
    from logging import getLogger

    lock = path + ".lock"
    announced = False
    while (owner := take_pid_file(lock)) != 0:
        if not announced:
            getLogger().info(f"waiting for process {owner}, which is training {path}")
            announced = True
        time.sleep(poll_s)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)
