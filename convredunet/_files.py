"""Writing files and folders whole or not at all: the one writer every output goes through.

Every file the library and the command line write (model ``.npz``, TorchScript and
``state_dict`` ``.pt``, ONNX, figures, run folders) is written to a fresh temporary
name beside the target and renamed over it only when complete:

* the temporary name is created exclusively (``O_CREAT | O_EXCL``; a folder by
  ``mkdir``), so no existing path is ever touched;
* on an exception, Ctrl-C (``KeyboardInterrupt``) or SIGTERM it is removed and the
  target is left as it was; two concurrent writers each rename a whole file (the
  last rename wins);
* permissions: a new file gets ``0o666 & ~umask`` and a new folder
  ``0o777 & ~umask`` (``0644`` / ``0755`` under the usual umask 022), as
  ``open()`` and ``mkdir`` give; replacing an existing file or folder keeps
  that path's permission bits (so a private ``0600`` file stays private).
"""
import contextlib
import os
import shutil
import signal
import stat
import threading
import uuid
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir", "Terminated", "sigterm_raises"]


def _check_target(path, what):
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if what == "file" and path.is_dir():
        raise ValueError(f"output '{path}' is a directory; give a file name")
    if not folder.is_dir():
        raise ValueError(f"cannot write '{path}': folder '{folder}' does not exist")
    return path, folder


def _temporary_name(folder, path, suffix):
    # A short prefix keeps a 255-character target name legal.
    return folder / f".{path.name[:32]}.{uuid.uuid4().hex[:12]}{suffix}"


def _existing_mode(path):
    """Permission bits of ``path`` when it exists (not following a final symlink), else None."""
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except OSError:
        return None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a fresh temporary file path beside ``path``; rename it to ``path`` on success.

    The writer may open the temporary path for writing as often as it likes
    (it exists, empty, when yielded). Its mode is set before the rename:
    ``0o666 & ~umask`` for a new file, the replaced file's permission bits
    otherwise (see the module notes).

    Raises
    ------
    ValueError
        When the folder does not exist or cannot be written (the message
        names the path and the reason).
    """
    path, folder = _check_target(path, "file")
    while True:
        tmp = _temporary_name(folder, path, ".tmp")
        try:
            handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - a 48-bit random name taken
            continue
        except OSError as exc:
            raise ValueError(f"cannot write '{path}': {exc.strerror or exc}") from None
        break
    try:
        new_mode = stat.S_IMODE(os.fstat(handle).st_mode)  # 0o666 & ~umask, from the kernel
    finally:
        os.close(handle)
    with _sigterm_cleans_up():
        try:
            yield tmp
            existing = _existing_mode(path)
            os.chmod(tmp, new_mode if existing is None else existing)
            os.replace(tmp, path)
        except OSError as exc:
            raise ValueError(f"cannot write '{path}': {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path, replace=False):
    """Yield a fresh temporary folder beside ``path``; move it there only on success.

    ``replace``: an existing ``path`` (file or folder) is replaced, keeping its
    permission bits; otherwise an existing ``path`` is an error. The old one is
    moved aside before the new one is renamed in, and removed after.

    Raises
    ------
    ValueError
        When the folder cannot be written, or ``path`` exists and not ``replace``.
    """
    path, folder = _check_target(path, "folder")
    if path.exists() and not replace:
        raise ValueError(f"output folder '{path}' exists")
    while True:
        tmp = _temporary_name(folder, path, ".partial")
        try:
            os.mkdir(tmp, 0o777)  # the umask applies
        except FileExistsError:  # pragma: no cover
            continue
        except OSError as exc:
            raise ValueError(f"cannot write output folder '{path}': "
                             f"{exc.strerror or exc}") from None
        break
    old = None
    with _sigterm_cleans_up():
        try:
            yield tmp
            existing = _existing_mode(path)
            if existing is not None:
                os.chmod(tmp, existing)
                old = _temporary_name(folder, path, ".old")
                os.rename(path, old)
            os.rename(tmp, path)
        except OSError as exc:
            raise ValueError(f"cannot write output folder '{path}': "
                             f"{exc.strerror or exc}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                if path.exists():
                    _remove(old)
                else:  # the rename in failed: put the old one back
                    with contextlib.suppress(OSError):
                        os.rename(old, path)


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (see :func:`sigterm_raises`)."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises():
    """While inside, SIGTERM raises :class:`Terminated`, so that every cleanup block runs.

    Yields the handler it replaced, which is restored on the way out. Only the
    main thread can handle signals; elsewhere this changes nothing (yields None).
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield previous
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigterm_cleans_up():
    """While inside, SIGTERM raises (so cleanup runs), then is delivered as before.

    Inside an enclosing :func:`sigterm_raises` (the command line) the
    :class:`Terminated` goes on to it; otherwise the signal is sent again to
    the handler found on entry (the default one ends the process).
    """
    with sigterm_raises() as previous:
        try:
            yield
        except Terminated:
            if previous is _raise_terminated:
                raise
            signal.signal(signal.SIGTERM, previous)
            os.kill(os.getpid(), signal.SIGTERM)  # the default action ends the process here
            raise InterruptedError("writing was interrupted by SIGTERM; nothing was kept") \
                from None
