"""Slack adapter: slash command, message shortcuts, thread variations and buttons over Socket Mode or HTTP."""

from adapters.slack.adapter import EVENTS_PATH, SlackAdapter

__all__ = ["EVENTS_PATH", "SlackAdapter"]
