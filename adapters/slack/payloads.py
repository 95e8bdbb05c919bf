"""Reading Slack payloads: where to answer, and the values our buttons and modals carry. Pure, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from adapters.slack.replies import ReplyTo
from bot.errors import InvalidRequestError


def reply_to(body: Mapping[str, Any]) -> ReplyTo:
    """Where to answer, from any payload: command, event, block action, shortcut or view submission."""
    if "command" in body:
        return ReplyTo(body.get("team_id"), body.get("user_id"), body.get("channel_id"), None, body.get("response_url"))
    if body.get("type") == "event_callback":
        return event_reply_to(body, body.get("event", {}))
    if body.get("type") == "message_action":
        return message_reply_to(body, body)
    if body.get("type") == "view_submission":
        found = metadata(body.get("view", {}))
        return ReplyTo(_id(body.get("team")), _id(body.get("user")), found.get("channel"), found.get("thread"))
    if body.get("type") == "block_actions" and body.get("message"):
        return result_reply_to(body)
    team, user, channel = _id(body.get("team")), _id(body.get("user")), _id(body.get("channel"))
    return ReplyTo(team, user, channel, None, body.get("response_url"))


def event_reply_to(body: Mapping[str, Any], event: Mapping[str, Any]) -> ReplyTo:
    thread = event.get("thread_ts") or event.get("ts")
    return ReplyTo(body.get("team_id"), event.get("user"), event.get("channel"), thread)


def message_reply_to(body: Mapping[str, Any], shortcut: Mapping[str, Any]) -> ReplyTo:
    message = shortcut.get("message", {})
    thread = message.get("thread_ts") or message.get("ts")
    team, user, channel = _id(body.get("team")), _id(body.get("user")), _id(body.get("channel"))
    return ReplyTo(team, user, channel, thread, body.get("response_url"))


def result_reply_to(body: Mapping[str, Any]) -> ReplyTo:
    """A button under a result: answers go in that result's thread (ephemeral notes via the response_url)."""
    message = body.get("message") or {}
    container = body.get("container") or {}
    thread = message.get("thread_ts") or message.get("ts") or container.get("message_ts")
    channel = _id(body.get("channel")) or container.get("channel_id")
    return ReplyTo(_id(body.get("team")), _id(body.get("user")), channel, thread, body.get("response_url"))


def _id(value: object) -> str | None:
    if isinstance(value, Mapping):
        found = value.get("id")
        return str(found) if found else None
    return str(value) if value else None


def metadata(view: Mapping[str, Any]) -> dict[str, Any]:
    """A modal's private_metadata (a JSON object we wrote), {} if it isn't one."""
    try:
        found = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def input_value(view: Mapping[str, Any], block: str, action: str) -> str:
    value = view.get("state", {}).get("values", {}).get(block, {}).get(action, {}).get("value")
    return str(value or "")


def job_value(action: Mapping[str, Any], kind: str, *, with_index: bool = False) -> tuple[str, int]:
    """``"<kind>:<job>[:<index>]"`` from a button's value (InvalidRequestError when it isn't one)."""
    parts = str(action.get("value") or "").split(":")
    try:
        if parts[0] != kind or len(parts) != (3 if with_index else 2):
            raise ValueError(parts[0])
        return parts[1], int(parts[2]) if with_index else 0
    except (ValueError, IndexError):
        raise InvalidRequestError(detail=f"bad button value for {kind}") from None
