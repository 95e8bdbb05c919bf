"""The Docker image's steps work, without Docker: the build context as .dockerignore leaves it, the build stage's
COPY and RUN steps replayed into a fresh venv (pip from the configured package index), then `imagebot check` and
a one-image `imagebot imagine` run from that venv in an empty folder, as the image's entrypoint would.

Slow (a fresh venv and a full install: about a minute); it runs in CI with the rest of the suite."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.images import decode

ROOT = Path(__file__).resolve().parent.parent
IMAGE_VENV = "/opt/venv"


@dataclass
class BuildStage:
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    copies: list[list[str]] = field(default_factory=list)  # [source..., destination]
    runs: list[str] = field(default_factory=list)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def build_stage(dockerfile: str) -> BuildStage:
    """The first stage (the one that builds the venv the final image copies)."""
    stage = BuildStage()
    froms = 0
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            froms += 1
            if froms > 1:
                break
        elif word == "WORKDIR":
            stage.workdir = rest
        elif word == "ENV":
            stage.env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif word == "COPY":
            assert not rest.startswith("--from"), rest
            stage.copies.append(shlex.split(rest))
        elif word == "RUN":
            stage.runs.append(rest)
    return stage


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for one context path: the last matching pattern wins, ``!`` re-includes;
    a pattern matches the path or any folder above it; ``**/`` matches at any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatchcase(part, tail) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            result = not negate
    return result


def dockerignore() -> list[str]:
    text = (ROOT / ".dockerignore").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def build_context(target: Path) -> list[str]:
    """Copy what Docker would send as the build context into ``target``; the paths sent."""
    patterns = dockerignore()
    sent = []
    for folder, subfolders, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT).as_posix()
        subfolders[:] = [s for s in subfolders if s not in (".git", ".venv", ".venv-ci")]  # (ignored: '*')
        for name in files:
            path = name if relative == "." else f"{relative}/{name}"
            if not ignored(path, patterns):
                (target / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, target / path)
                sent.append(path)
    return sent


def test_the_dockerignore_keeps_secrets_data_and_local_environments_out() -> None:
    patterns = dockerignore()
    for path in [
        ".env",
        "config/.env",
        "config/settings.toml",
        "data/jobs.sqlite3",
        "data/images/a.png",
        ".venv/bin/python",
        ".git/HEAD",
        "bot/__pycache__/x.pyc",
        "tests/test_web.py",
        "bot/.env",
    ]:
        assert ignored(path, patterns), path
    for path in [
        "pyproject.toml",
        "README.md",
        "config/constraints.txt",
        "bot/service.py",
        "adapters/web/static/app.js",
        "bot/defaults/settings.toml",
    ]:
        assert not ignored(path, patterns), path


def test_the_image_stops_gracefully_within_dockers_wait() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()
    assert ("STOPSIGNAL", "SIGTERM") in instructions(dockerfile)
    grace = float(re.search(r'IMAGEBOT_SHUTDOWN_GRACE: "(\d+)"', compose).group(1))  # type: ignore[union-attr]
    stop_wait = float(re.search(r"stop_grace_period: (\d+)s", compose).group(1))  # type: ignore[union-attr]
    assert stop_wait >= grace + 5
    assert "COPY config config" not in dockerfile  # an operator's config/.env must never be baked in


@pytest.mark.image
def test_the_images_build_steps_make_a_working_bot(tmp_path: Path) -> None:
    stage = build_stage((ROOT / "Dockerfile").read_text())
    context, root, venv = tmp_path / "context", tmp_path / "root", tmp_path / "venv"
    sent = build_context(context)
    assert not [p for p in sent if p.startswith(("data/", ".env", "config/.env", "tests/"))]

    workdir = root / stage.workdir.lstrip("/")
    workdir.mkdir(parents=True)
    for *sources, destination in stage.copies:  # COPY, relative to the stage's WORKDIR
        target = workdir / destination
        for source in sources:
            origin = context / source
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)
            else:
                into = target / origin.name if destination.endswith("/") or target.is_dir() else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGEBOT_", "DISCORD_", "SLACK_"))}
    env.pop("VIRTUAL_ENV", None)
    for run in stage.runs:
        command = run.replace(IMAGE_VENV, str(venv))
        command = re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", command)
        done = subprocess.run(
            ["bash", "-c", command], cwd=workdir, env=env | stage.env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]

    empty = tmp_path / "empty"
    empty.mkdir()
    runtime = env | {"IMAGEBOT_DATA_DIR": str(empty / "data"), "PYTHONUNBUFFERED": "1"}
    imagebot = str(venv / "bin" / "imagebot")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bot, adapters.web; print(bot.__file__)"],
        cwd=empty,
        env=runtime,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout  # installed, not the worktree
    check = subprocess.run([imagebot, "check"], cwd=empty, env=runtime, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert "provider: offline" in check.stdout
    imagine = subprocess.run(
        [imagebot, "imagine", "a lighthouse at dusk", "--out", str(empty / "out")],
        cwd=empty,
        env=runtime,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imagine.returncode == 0, imagine.stderr
    [image] = list((empty / "out").glob("*.png"))
    assert decode(image.read_bytes()).format == "PNG"
