"""The composition root of the core: the only place that picks concrete classes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlsplit

import aiohttp

from bot.admission_redis import RedisAdmission, redis_location
from bot.admission_redis import connect as connect_redis
from bot.catalog import Catalog
from bot.jobs import JobService
from bot.limits import Admission, AdmissionControl
from bot.metrics import Metrics
from bot.ports import ImageProvider, JobStore
from bot.providers.offline import OfflineImages
from bot.providers.openai import OpenAIImages
from bot.redact import register_secrets
from bot.service import ImageService
from bot.settings import Settings, SettingsError
from bot.store import ResultFiles, SQLiteJobStore, StoreError
from bot.store_pg import PostgresJobStore, database_location

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Images:
    """The stateless image pipeline: provider, admission and the service around them."""

    settings: Settings
    catalog: Catalog
    admission: AdmissionControl
    provider: ImageProvider
    service: ImageService
    metrics: Metrics = field(default_factory=Metrics)


@dataclass(frozen=True, slots=True)
class Core:
    """Everything an adapter needs from the core: the image pipeline and the durable jobs around it."""

    settings: Settings
    catalog: Catalog
    admission: AdmissionControl
    provider: ImageProvider
    service: ImageService
    jobs: JobService
    metrics: Metrics = field(default_factory=Metrics)  # this core's own registry, served at /metrics


# Answers are megabytes of base64: a bigger read buffer means fewer pause/resume cycles (and wakeups) per answer.
READ_BUFFER = 1024 * 1024


def new_http_session() -> aiohttp.ClientSession:
    """The process's one HTTP session (created by the entry point, injected everywhere).

    Proxies from the environment (HTTPS_PROXY, NO_PROXY...) and ~/.netrc are honoured when there are any: with
    ``trust_env`` aiohttp looks both up again in worker threads for every request, so it is on only then.
    """
    return aiohttp.ClientSession(trust_env=environment_configures_http(), read_bufsize=READ_BUFFER)


_settled = False


def settle_after_start() -> None:
    """What ``imagebot run`` does once, when its adapters are up: what start-up made (modules, catalogues,
    translations, settings, the core: ~100k objects) is moved out of the garbage collector's sight (``gc.freeze``),
    so that the collections a burst of requests sets off walk what the requests made, not all of that again (a
    full collection of it: ~40 ms on the event loop, in the middle of a burst of acknowledgements).
    Once per process: what is frozen is never collected, so only start-up's own objects should be."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()


def environment_configures_http() -> bool:
    """Whether the environment sets a proxy for aiohttp to use, or a .netrc it would read credentials from."""
    if urllib.request.getproxies():  # what aiohttp asks, as it asks it
        return True
    if os.environ.get("NETRC"):
        return True
    try:
        home = Path.home()
    except RuntimeError:  # no home directory to hold a .netrc
        return False
    return (home / ".netrc").exists() or (home / "_netrc").exists()


def build_images(
    settings: Settings, session: aiohttp.ClientSession, *, provider: ImageProvider | None = None
) -> Images:
    """Wire the service from settings: provider by credentials (or IMAGEBOT_PROVIDER, or the one given), limits,
    catalog."""
    register_secrets([*settings.secret_values(), *_url_credentials(settings)])
    catalog = settings.catalog()
    admission = build_admission(settings)
    metrics = Metrics()
    metrics.watch_queue(lambda: admission.queue_length, lambda: admission.running)
    if provider is None:
        provider = _provider(settings, session, admission, metrics)
    log.info("image provider: %s, default model %s", provider.name, settings.default_model)
    service = ImageService(
        provider=provider,
        catalog=catalog,
        admission=admission,
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
        variation_prompts={
            "subtle": settings.variation_prompt_subtle,
            "strong": settings.variation_prompt_strong,
        },
        default_n=settings.default_n,
        partial_images=settings.openai.partial_images,
        metrics=metrics,
    )
    return Images(settings, catalog, admission, provider, service, metrics)


def build_admission(settings: Settings) -> AdmissionControl:
    """Shared through Redis when IMAGEBOT_REDIS_URL is set (several processes on one key), else in-process."""
    limits = settings.limits
    if settings.redis_url is None:
        return Admission(
            max_concurrent=limits.max_concurrent,
            images_per_minute=limits.images_per_minute,
            per_user_jobs=limits.per_user_jobs,
            max_queue=limits.max_queue,
            pacing_window=limits.pace_window_seconds,
            pacing_margin=limits.pace_margin_seconds,
            position_interval=limits.position_interval,
            max_result_bytes=limits.max_result_bytes,
        )
    url = settings.redis_url.get_secret_value()
    log.info("admission shared through Redis at %s", redis_location(url))
    return RedisAdmission(
        connect_redis(url),
        max_concurrent=limits.max_concurrent,
        images_per_minute=limits.images_per_minute,
        per_user_jobs=limits.per_user_jobs,
        max_queue=limits.max_queue,
        pacing_window=limits.pace_window_seconds,
        pacing_margin=limits.pace_margin_seconds,
        lease=limits.admission_lease_seconds,
        position_interval=limits.position_interval,
        max_result_bytes=limits.max_result_bytes,
    )


def _provider(
    settings: Settings, session: aiohttp.ClientSession, admission: AdmissionControl, metrics: Metrics
) -> ImageProvider:
    """The provider the settings ask for: OpenAI (or a compatible server) with a key, else the offline one."""
    if settings.provider_name == "openai":
        if settings.openai_api_key is None:
            raise SettingsError("setting OPENAI_API_KEY: IMAGEBOT_PROVIDER=openai needs an API key")
        if urlsplit(settings.openai_base_url).username is not None:
            # The API key already fills the Authorization header; aiohttp refuses URL credentials on top.
            raise SettingsError(
                "setting OPENAI_BASE_URL: remove the user:password part; the API key goes in OPENAI_API_KEY "
                "(and a proxy's credentials in HTTPS_PROXY)"
            )
        return OpenAIImages(
            session,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key.get_secret_value(),
            org_id=settings.openai_org_id.get_secret_value() if settings.openai_org_id else None,
            project_id=settings.openai_project_id.get_secret_value() if settings.openai_project_id else None,
            settings=settings.openai,
            on_throttle=admission.throttle,
            result_budget=admission.result_bytes,
            metrics=metrics,
        )
    return OfflineImages()


def _url_credentials(settings: Settings) -> list[str]:
    """Passwords (or a lone user name, often a token) written into URL settings, for the redactor."""
    urls = (
        settings.openai_base_url,
        settings.discord_api_base_url,
        settings.discord_gateway_url,
        settings.slack_api_url,
    )
    found: list[str] = []
    for url in urls:
        parts = urlsplit(url or "")
        secret = parts.password if parts.password is not None else parts.username
        if secret:
            found.append(unquote(secret))
    return found


class DataFolderInUseError(StoreError):
    """Another process holds the data folder: two cores on one folder would take each other's jobs."""


class DataFolderLock:
    """An exclusive ``flock`` on ``<data dir>/.lock``, holding the owner's pid; released when the process ends."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._handle: TextIO | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``DataFolderInUseError`` naming the holder (blocking I/O: call in a thread)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Held open for the core's life; "a+" leaves the holder's pid in place until the lock is ours.
            handle = open(self.folder / ".lock", "a+", encoding="ascii")  # noqa: SIM115
        except OSError as exc:
            raise StoreError(f"IMAGEBOT_DATA_DIR: cannot use {self.folder} ({exc.strerror}).") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read(20).strip()
            handle.close()
            raise DataFolderInUseError(
                f"another imagebot is already using the data folder {self.folder.resolve()} "
                f"(pid {holder if holder.isdigit() else 'unknown'}); stop it first, or set IMAGEBOT_DATA_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None


def describe_database(settings: Settings) -> str:
    """Which job database the settings choose, without credentials (for ``imagebot check`` and the log)."""
    if settings.database_url is not None:
        return f"PostgreSQL at {database_location(settings.database_url.get_secret_value())}"
    return f"SQLite at {settings.data_dir / 'jobs.sqlite3'}"


async def open_store(settings: Settings) -> JobStore:
    """The job store: PostgreSQL when IMAGEBOT_DATABASE_URL is set, else SQLite under the data folder.

    Result files and spools stay under IMAGEBOT_DATA_DIR either way: with PostgreSQL, every process must see the
    same folder (a shared volume) so that any of them can finish and deliver any job.
    """
    log.info("job database: %s", describe_database(settings))
    if settings.database_url is not None:
        return await PostgresJobStore.open(settings.database_url.get_secret_value())
    return await SQLiteJobStore.open(settings.data_dir / "jobs.sqlite3")


@contextlib.asynccontextmanager
async def open_core(
    settings: Settings,
    session: aiohttp.ClientSession,
    *,
    exclusive: bool = True,
    serving: bool = False,
    provider: ImageProvider | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Core]:
    """The whole core, with its job database under ``IMAGEBOT_DATA_DIR`` open for the duration.

    ``provider`` and ``clock`` substitute the settings' provider and the wall clock (tests: a fake at the port,
    a clock they move).

    ``exclusive`` (anything that runs jobs): jobs a previous process left are taken over at start, and for the
    core's life its leases are renewed and jobs of processes that died are taken over (``JobService``). With
    SQLite the data folder is also locked: one process per folder (with PostgreSQL, many processes share one
    folder and the database arbitrates). Without it (reports such as ``usage`` and ``history``) the store is
    only read alongside a running bot: no lock, no take-over, and no job may be run.

    ``serving`` (``imagebot run``): with PostgreSQL, only a serving process takes other processes' jobs over (a
    one-shot command such as ``imagebot imagine`` renews the leases of its own jobs and leaves the rest alone).
    """
    shared = settings.database_url is not None
    lock = DataFolderLock(settings.data_dir)
    if exclusive and not shared:
        await asyncio.to_thread(lock.acquire)  # first: a second process stops before it does or logs anything
    try:
        images = build_images(settings, session, provider=provider)
        store = await open_store(settings)
        try:
            jobs = JobService(
                images=images.service,
                store=store,
                files=ResultFiles(settings.data_dir / "results"),
                jobs=settings.jobs,
                budgets=settings.budgets,
                clock=clock,
                metrics=images.metrics,
            )
            leases: asyncio.Task[None] | None = None
            if exclusive:
                take_over = serving or not shared
                if take_over:
                    await jobs.start(take_over_all=not shared)
                leases = asyncio.create_task(jobs.keep_leases(take_over=take_over), name="job-leases")
            try:
                yield Core(
                    settings, images.catalog, images.admission, images.provider, images.service, jobs, images.metrics
                )
            finally:
                if leases is not None:
                    leases.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await leases
                    await jobs.stop()
        finally:
            await store.close()
            await images.admission.aclose()
    finally:
        await asyncio.to_thread(lock.release)
