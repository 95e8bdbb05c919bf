"""`imagebot` (== `python -m bot`): the command line; `run` (and `discord`) hand over to ``adapters.runner``.

    imagebot imagine PROMPT [-n N] [--size S] [--quality Q] [--model M] [--out DIR]
    imagebot edit IMAGE PROMPT [--mask MASK | --region REGION] [-n N] [--out DIR]
    imagebot vary IMAGE [-n N] [--prompt P] [--out DIR]
    imagebot check
    imagebot usage [--since DATE] [--by user|channel|workspace] [--format table|json|csv]
    imagebot history [--user ID] [--limit N] [--format table|json|csv]
    imagebot prune
    imagebot discord sync | invite
    imagebot run            (also plain `imagebot`)

Files go to --out (default: the current folder), one path per line on stdout. Failures: one friendly
paragraph on stderr and a non-zero exit; never a traceback, a raw error body or a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import RedisError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot import imaging, reports
from bot.admission_redis import check_reachable as check_redis
from bot.admission_redis import redis_location
from bot.bootstrap import Core, describe_database, new_http_session, open_core
from bot.budgets import month_window
from bot.errors import ImageBotError, InvalidImageError, UnexpectedError
from bot.jobs import Request
from bot.models import EditRequest, GeneratedImage, GenerateRequest, ImageResult, JobContext, VaryRequest
from bot.redact import MASK, RedactingFilter, redact
from bot.service import slugify
from bot.settings import Settings, SettingsError, load_settings
from bot.store import StoreError

log = logging.getLogger("bot")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
CLI_CONTEXT = JobContext(platform="cli", user=os.environ.get("USER") or "local")
CLI_REQUESTER = CLI_CONTEXT.requester
READ_ONLY_COMMANDS = frozenset({"check", "usage", "history"})


# --- logging (configured here and nowhere else) ------------------------------------------------------------


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class _BriefFormatter(logging.Formatter):
    """For one-shot CLI commands: one line per record, no tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        return f"imagebot: {record.levelname.lower()}: {record.getMessage()}"


def configure_logging(level: str, fmt: str, *, brief: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif brief:
        handler.setFormatter(_BriefFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --- argument parsing -------------------------------------------------------------------------------------


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 1 <= value <= 10:
        raise argparse.ArgumentTypeError("must be between 1 and 10")
    return value


def _count_any(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _date(text: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date like 2026-11-01") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagebot", description="Make images from text, in chat or here.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    imagine = commands.add_parser("imagine", help="make images from a prompt")
    imagine.add_argument("prompt", metavar="PROMPT")
    imagine.add_argument("-n", type=_count, default=None, help="how many images (default 1)")
    imagine.add_argument("--size", help="e.g. 1024x1024, 1536x1024, auto")
    imagine.add_argument("--quality", help="e.g. low, medium, high, auto")
    imagine.add_argument("--model", help="model name or alias (default from settings)")
    imagine.add_argument("--out", default=".", help="folder for the PNG files (default: here)")

    edit = commands.add_parser("edit", help="edit an image with a prompt, a mask or a region")
    edit.add_argument("image", metavar="IMAGE")
    edit.add_argument("prompt", metavar="PROMPT")
    where = edit.add_mutually_exclusive_group()
    where.add_argument("--mask", help="mask image: transparent or white = the area to change")
    where.add_argument("--region", help=f"{', '.join(imaging.REGION_NAMES)}, or cells of a 4x4 grid like A1:B2")
    edit.add_argument("-n", type=_count, default=None, help="how many images (default 1)")
    edit.add_argument("--out", default=".", help="folder for the PNG files (default: here)")

    vary = commands.add_parser("vary", help="make variations of an image")
    vary.add_argument("image", metavar="IMAGE")
    vary.add_argument("-n", type=_count, default=None, help="how many variations (default 1)")
    vary.add_argument("--prompt", help="optional direction for the variations")
    vary.add_argument("--out", default=".", help="folder for the PNG files (default: here)")

    commands.add_parser("check", help="show settings (secrets masked) and test the image provider")

    usage = commands.add_parser("usage", help="images and dollars spent, by user, channel or workspace")
    usage.add_argument("--since", type=_date, help="YYYY-MM-DD (UTC; default: the first of this month)")
    usage.add_argument("--by", choices=("user", "channel", "workspace"), default="user")
    usage.add_argument("--format", choices=reports.FORMATS, default="table", help="table (default), json or csv")

    history = commands.add_parser("history", help="recent jobs with status and cost")
    history.add_argument("--user", help="only this user (an id, or platform:id)")
    history.add_argument("--limit", type=_count_any, default=20, help="how many jobs (default 20)")
    history.add_argument("--format", choices=reports.FORMATS, default="table", help="table (default), json or csv")

    commands.add_parser("prune", help="delete stored images (results, uploads) older than the retention period")
    commands.add_parser("run", help="start the chat adapters (default command)")

    discord_cmd = commands.add_parser("discord", help="Discord: register the slash commands, print the invite link")
    discord_actions = discord_cmd.add_subparsers(dest="discord_action", metavar="ACTION", required=True)
    discord_actions.add_parser("sync", help="log in and register the slash commands now, then exit")
    discord_actions.add_parser("invite", help="print the URL that adds the bot to a server")
    return parser


# --- commands ---------------------------------------------------------------------------------------------


async def _read_input(path_text: str, settings: Settings) -> bytes:
    path = Path(path_text)
    limit = settings.imaging.max_input_bytes
    try:
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        if size > limit:
            raise InvalidImageError(f"{path.name} is {size / 1e6:.0f} MB; the limit is {limit / 1e6:.0f} MB.")
        return await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise InvalidImageError(f"There is no file at {path_text}.") from None
    except IsADirectoryError:
        raise InvalidImageError(f"{path_text} is a folder, not an image file.") from None
    except PermissionError:
        raise InvalidImageError(f"I'm not allowed to read {path_text}.") from None


def _write_results(images: Sequence[GeneratedImage], out_dir: Path, stem: str) -> list[Path]:
    """Write each image as ``<stem>-<k>.<ext>``, taking the next free k: never overwrite anything."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    k = 1
    for image in images:
        extension = image.filename.rsplit(".", 1)[-1]
        while True:
            target = out_dir / f"{stem}-{k}.{extension}"
            k += 1
            try:
                with open(target, "xb") as handle:  # "x": fail if it exists, even if created meanwhile
                    handle.write(image.data)
            except FileExistsError:
                continue
            written.append(target)
            break
    return written


async def _save(result: ImageResult, out: str, stem: str) -> None:
    try:
        paths = await asyncio.to_thread(_write_results, result.images, Path(out), stem)
    except OSError as exc:
        raise InvalidImageError(
            f"I couldn't write the images to {out}: {exc.strerror or 'the folder is not writable'}."
        ) from None
    for path in paths:
        print(path)
    if result.notice:
        print(f"note: {result.notice}", file=sys.stderr)


async def _run_job(core: Core, request: Request, out: str, stem: str) -> None:
    """Run the request as a recorded job (the operator at the terminal needs no confirmation), save, deliver."""
    outcome = await core.jobs.submit(CLI_CONTEXT, request, confirmed=True)
    if outcome.result is None:
        raise UnexpectedError(detail=f"job {outcome.job.id} ended as {outcome.job.status} without images")
    await _save(outcome.result, out, stem)
    await core.jobs.mark_delivered(outcome.job.id)


async def _imagine(core: Core, args: argparse.Namespace) -> int:
    request = GenerateRequest(
        prompt=args.prompt,
        n=args.n if args.n is not None else core.settings.default_n,
        size=args.size,
        quality=args.quality,
        model=args.model,
        requester=CLI_REQUESTER,
    )
    await _run_job(core, request, args.out, slugify(args.prompt))
    return EXIT_OK


async def _edit(core: Core, args: argparse.Namespace) -> int:
    image = await _read_input(args.image, core.settings)
    mask = await _read_input(args.mask, core.settings) if args.mask else None
    request = EditRequest(
        images=(image,),
        prompt=args.prompt,
        mask=mask,
        region=args.region,
        n=args.n if args.n is not None else core.settings.default_n,
        requester=CLI_REQUESTER,
    )
    await _run_job(core, request, args.out, slugify(args.prompt))
    return EXIT_OK


async def _vary(core: Core, args: argparse.Namespace) -> int:
    image = await _read_input(args.image, core.settings)
    request = VaryRequest(
        image=image,
        n=args.n if args.n is not None else core.settings.default_n,
        prompt=args.prompt,
        requester=CLI_REQUESTER,
    )
    await _run_job(core, request, args.out, slugify(Path(args.image).stem, fallback="image") + "-variation")
    return EXIT_OK


# "scheme://userinfo@": a password, or a user name that may itself be a token (https://TOKEN@host).
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/?#\s]*)@")


def hide_url_credentials(text: str) -> str:
    """``http://user:pass@proxy/v1`` -> ``http://user:[redacted]@proxy/v1`` (a lone user name is masked whole)."""

    def masked(match: re.Match[str]) -> str:
        scheme, userinfo = match.groups()
        user, colon, _password = userinfo.partition(":")
        return f"{scheme}{user}:{MASK}@" if colon else f"{scheme}{MASK}@"

    return _URL_USERINFO.sub(masked, text)


def _print_settings(settings: Settings) -> None:
    print("settings (secrets masked):")
    for name, value in settings.masked().items():
        print(f"  {name} = {hide_url_credentials(value)}")


async def _check(core: Core, args: argparse.Namespace) -> int:
    """The settings are printed before the core is built (see ``_one_shot``); this tests the provider."""
    settings = core.settings
    print("  reachable: yes (schema up to date)")  # the core opened (and migrated) the job database
    model, spec = core.catalog.resolve(None)
    if spec.shutdown is not None and (spec.shutdown - dt.date.today()).days <= 30:
        print(f"warning: the default model {model} shuts down on {spec.shutdown}; use {spec.replacement}")
    health = await core.provider.check(model)
    if core.provider.offline:
        why = "no API key" if settings.openai_api_key is None else "IMAGEBOT_PROVIDER=offline"
        print(f"provider: {core.provider.name} (built-in generator, {why})")
    else:
        print(f"provider: {core.provider.name} at {hide_url_credentials(settings.openai_base_url)}")
    print(f"  reachable: {'yes' if health.reachable else 'no'}")
    known = {True: "yes", False: "no", None: "unknown"}[health.model_known]
    print(f"  model {model} known: {known}")
    print(f"  {hide_url_credentials(redact(health.detail))}")
    return EXIT_OK if health.reachable and health.model_known is not False else EXIT_FAILED


async def _check_redis(url: str) -> None:
    """``redis: host:port/db reachable``, or a SettingsError (exit 2, one line) when it cannot be used."""
    where = redis_location(url)
    try:
        await check_redis(url)
    except (RedisAuthenticationError, RedisResponseError):  # a wrong or missing password, or a user not allowed
        raise SettingsError(f"IMAGEBOT_REDIS_URL: Redis at {where} refused the password.") from None
    except RedisTimeoutError:
        raise SettingsError(f"IMAGEBOT_REDIS_URL: Redis at {where} did not answer in time.") from None
    except (RedisError, OSError):
        raise SettingsError(
            f"IMAGEBOT_REDIS_URL: cannot connect to {where} (connection refused: is Redis running there?)."
        ) from None
    print(f"redis: {where} reachable")


async def _usage(core: Core, args: argparse.Namespace) -> int:
    since = args.since or month_window(dt.datetime.now(dt.UTC))[0]
    rows = await core.jobs.store.usage(since.timestamp(), by=args.by)
    if args.format != "table":
        return _print_records(reports.usage_records(rows, args.by), args.format, [args.by, "jobs", "images", "dollars"])
    print(f"since {since:%Y-%m-%d} (UTC), by {args.by}")
    width = max([len(args.by), 5, *(len(r.key) for r in rows)])
    print(f"{args.by:<{width}}  {'jobs':>6}  {'images':>6}  {'dollars':>9}")
    for row in rows:
        print(f"{row.key:<{width}}  {row.jobs:>6}  {row.images:>6}  {'$' + format(row.dollars, '.4f'):>9}")
    total_jobs, total_images = sum(r.jobs for r in rows), sum(r.images for r in rows)
    total_dollars = sum(r.dollars for r in rows)
    print(f"{'total':<{width}}  {total_jobs:>6}  {total_images:>6}  {'$' + format(total_dollars, '.4f'):>9}")
    return EXIT_OK


async def _history(core: Core, args: argparse.Namespace) -> int:
    jobs = await core.jobs.history(user=args.user, limit=args.limit)
    if args.format != "table":
        return _print_records(reports.history_records(jobs), args.format, list(reports.HISTORY_FIELDS))
    print(f"{'job':<10}  {'created (UTC)':<16}  {'status':<21}  {'kind':<8}  {'n':>2}  {'cost':>8}  prompt")
    for job in jobs:
        created = dt.datetime.fromtimestamp(job.created_at, dt.UTC)
        cost = "-" if job.status.value == "failed" else f"${job.cost:.4f}"
        prompt = _history_prompt(job.kind, job.prompt)
        who = job.context.requester
        print(
            f"{job.id:<10}  {created:%Y-%m-%d %H:%M}  {job.status.value:<21}  {job.kind:<8}  "
            f"{job.images_requested:>2}  {cost:>8}  {prompt} ({who})"
        )
    return EXIT_OK


def _print_records(records: list[reports.Record], fmt: str, fields: list[str]) -> int:
    """``--format json`` (a list of objects) or ``csv`` (a header row, then one row per record) on stdout."""
    sys.stdout.write(reports.as_json(records) if fmt == "json" else reports.as_csv(records, fields))
    return EXIT_OK


def _history_prompt(kind: str, prompt: str) -> str:
    """A vary job's prompt is only the optional steer: say it is a variation, with the steer if there is one."""
    if kind == "vary":
        prompt = f"variation: {prompt}" if prompt.strip() else "variation"
    return prompt if len(prompt) <= 50 else prompt[:49] + "…"


async def _prune(core: Core, args: argparse.Namespace) -> int:
    pruned = await core.jobs.prune()
    days = core.settings.jobs.retention_days
    print(f"deleted the stored images (results and uploads) of {pruned} job(s) older than {days:g} days")
    return EXIT_OK


async def _one_shot(settings: Settings, args: argparse.Namespace) -> int:
    handlers = {
        "imagine": _imagine,
        "edit": _edit,
        "vary": _vary,
        "check": _check,
        "usage": _usage,
        "history": _history,
        "prune": _prune,
    }
    if args.command == "check":
        _print_settings(settings)  # even when the core can't be built: the listing helps to see why
        print(f"database: {describe_database(settings)}")  # a database it can't open ends the check here
        if settings.redis_url is not None:
            await _check_redis(settings.redis_url.get_secret_value())
    # Reports only read: they work beside a running bot. Whatever runs or deletes jobs takes the data folder.
    exclusive = args.command not in READ_ONLY_COMMANDS
    async with new_http_session() as session, open_core(settings, session, exclusive=exclusive) as core:
        return await handlers[args.command](core, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"imagebot: {exc.user_message}", file=sys.stderr)
        return EXIT_CONFIG
    if command in ("run", "discord"):
        from adapters import runner  # the one arrow from the core up to the adapters: the process runner

        if command == "discord":
            configure_logging("DEBUG" if args.verbose else "WARNING", settings.log_format, brief=not args.verbose)
            return runner.discord(settings, args.discord_action)
        configure_logging(settings.log_level, settings.log_format)
        return runner.run(settings)
    level = "DEBUG" if args.verbose else "ERROR"
    configure_logging(level, settings.log_format, brief=not args.verbose)
    try:
        return asyncio.run(_one_shot(settings, args))
    except (SettingsError, StoreError) as exc:  # the operator's set-up: one line, no reference id
        print(f"imagebot: {exc.user_message}", file=sys.stderr)
        return EXIT_CONFIG
    except ImageBotError as exc:
        print(f"imagebot: {exc.friendly()}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("imagebot: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one friendly line, details in the log only
        wrapped = UnexpectedError(detail=f"{type(exc).__name__}: {exc}")
        log.error("unexpected failure (ref %s): %s", wrapped.ref, wrapped.detail, exc_info=args.verbose)
        print(f"imagebot: {wrapped.friendly()}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
