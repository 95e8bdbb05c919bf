"""A plain, non-editable install works from any folder: the defaults ship inside the package.

The package is built into a wheel from a copy of the sources (so nothing of the checkout can leak in), with
the test environment's setuptools and no package index, installed into a folder of its own, and run from an
empty folder with no API key (the offline provider), the way an operator would after ``pip install .``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
_SOURCES = ("pyproject.toml", "README.md", "bot", "adapters")
_OURS = ("OPENAI_", "IMAGEBOT_", "DISCORD_", "SLACK_")


def _pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources, installed (not editable) into its own folder."""
    source = tmp_path_factory.mktemp("source")
    for name in _SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    wheels = tmp_path_factory.mktemp("wheels")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels), ".", cwd=source)
    (wheel,) = wheels.glob("imagebot-*.whl")
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel), cwd=wheels)
    return target


def _run(installed: Path, cwd: Path, *args: str, program: str = sys.executable) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(_OURS)}
    env |= {"PYTHONPATH": str(installed), "IMAGEBOT_DATA_DIR": str(cwd / "data"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([program, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_installed_copy_is_what_runs_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    done = _run(installed, tmp_path, "-c", "import bot, adapters; print(bot.__file__); print(adapters.__file__)")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.split():
        assert Path(line).is_relative_to(installed), line
    assert (installed / "bot" / "defaults" / "settings.toml").is_file()


def test_imagine_from_an_empty_folder_writes_a_png(installed: Path, tmp_path: Path) -> None:
    done = _run(installed, tmp_path, "-m", "bot", "imagine", "x", "--out", "out")
    assert done.returncode == 0, done.stderr
    (path,) = [Path(line) for line in done.stdout.splitlines() if line.strip()]
    written = path if path.is_absolute() else tmp_path / path
    assert written.parent == tmp_path / "out"
    with Image.open(written) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
    assert "capability table is empty" not in done.stderr


def test_check_from_an_empty_folder_passes(installed: Path, tmp_path: Path) -> None:
    done = _run(installed, tmp_path, "check", program=str(installed / "bin" / "imagebot"))  # the console script
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model gpt-image-2 known: yes" in done.stdout
    assert not (tmp_path / "config").exists()  # nothing but the packaged defaults was there to read


def test_an_override_file_changes_only_what_it_names(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings.toml").write_text(
        'default_model = "fast"\n[limits]\nimages_per_minute = 5\n[models."gpt-image-2.6-flare"]\nmax_n = 2\n'
    )
    script = (
        "from bot.settings import load_settings; s = load_settings(); "
        "print(s.default_model, s.limits.images_per_minute, s.limits.max_queue, "
        "s.models['gpt-image-2.6-flare'].max_n, s.models['gpt-image-2.6-flare'].streaming, len(s.models))"
    )
    done = _run(installed, tmp_path, "-c", script)
    assert done.returncode == 0, done.stderr
    default_model, pace, queue, max_n, streaming, rows = done.stdout.split()
    assert (default_model, pace, queue, max_n, streaming) == ("fast", "5.0", "500", "2", "True")
    assert int(rows) >= 10  # every packaged row is still there


def test_the_installed_package_answers_in_german(installed: Path, tmp_path: Path) -> None:
    """The catalogues ship as package data: a core error renders in German from the installed copy."""
    script = (
        "from adapters.common import i18n; from bot.errors import RateLimitedError; "
        "print(i18n.SHIPPED); print(i18n._(RateLimitedError(retry_after=12).text, i18n.negotiate('de-DE')))"
    )
    done = _run(installed, tmp_path, "-c", script)
    assert done.returncode == 0, done.stderr
    shipped, german = done.stdout.splitlines()
    assert shipped == "('de', 'es', 'fr', 'ja', 'pt_BR')"
    assert german == "Der Bilddienst bremst den Bot gerade aus. Bitte versuch es in etwa 12 Sekunden erneut."
