"""The one access policy for every entry point of every platform: allow-lists, direct messages, and who may
press a result's buttons.

Adapters describe who is asking and where (``Requester``) from the payload alone, with no I/O, so a refusal
can be the acknowledgement itself (ephemeral, within the 3-second deadline).

Direct messages on Discord: a DM has no server, so no server, channel or role list can vouch for it. With
``allow_dms`` unset ("auto") DMs are allowed only while no Discord allow-list is set; once any list is set,
DMs are refused unless the operator sets ``allow_dms = true`` (which then opens DMs to anyone who can reach
the bot) — an operator who limits the bot to some servers or roles doesn't also pay for strangers' DMs.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from bot.models import Job
from bot.settings import DiscordSettings, SlackSettings
from bot.text import N_, Text

NOT_IN_DMS = N_("I don't take requests in direct messages here. Use me in a server where I'm enabled.")
NOT_THIS_SERVER = N_("I'm not enabled on this server.")
NOT_THIS_CHANNEL = N_("I'm not enabled in this channel. Try another one.")
NEEDS_ROLE = N_("You need one of the roles allowed to make images here.")
NOT_THIS_WORKSPACE = N_("This workspace isn't allowed to use me. Ask the person who runs the bot.")
NOT_THIS_SLACK_CHANNEL = N_("I'm not allowed to make images in this channel. Try one where I'm enabled.")
NOT_ON_THE_LIST = N_("You're not on the list of people who may use me. Ask the person who runs the bot.")


@dataclass(frozen=True, slots=True)
class Requester:
    """Who acts, and where: everything the policy looks at, read from the platform's payload."""

    platform: str  # "discord", "slack", "web"
    user: str
    workspace: str | None = None  # Discord guild, Slack team
    channel: str | None = None
    parent_channel: str | None = None  # a thread's channel (Discord)
    roles: frozenset[str] = field(default_factory=frozenset)  # Discord roles of the member in this guild
    direct: bool = False  # a direct message (no server)


class AccessPolicy:
    """Decides, without I/O, whether a requester may use the bot and press a given job's buttons."""

    def __init__(self, discord: DiscordSettings, slack: SlackSettings):
        self._discord = discord
        self._slack = slack

    def refusal(self, who: Requester) -> Text | None:
        """Why the operator's rules refuse this request (None: allowed), to render in the reader's language."""
        if who.platform == "discord":
            return self._discord_refusal(who)
        if who.platform == "slack":
            return self._slack_refusal(who)
        return None  # the playground: whoever passed its password and holds a session

    def may_press(self, job: Job, who: Requester, *, owner_only: bool = False) -> Text | None:
        """Why ``who`` may not act on ``job``'s result (None: allowed): the requester always may; others only
        where the platform's ``others_may_press`` says so, and never across platforms or playground sessions.
        ``owner_only``: what only the requester may ever do (Cancel, Publish/Share a private result, Open again)."""
        owner = job.context
        if owner.platform != who.platform:
            return N_("That result belongs somewhere else.")
        if owner.user == who.user:
            return None
        others = {"discord": self._discord.others_may_press, "slack": self._slack.others_may_press}
        if others.get(who.platform, False) and not owner_only:
            return None
        if who.platform in ("discord", "slack"):
            mention = f"<@{owner.user}>"
            return N_("Only {mention} can use these buttons. Make your own with /imagine.", mention=mention)
        return N_("Only the person who asked can use these buttons. Make your own with /imagine.")

    def dms_allowed(self) -> bool:
        """Discord: ``allow_dms`` as set, or "auto": allowed only while no allow-list is set."""
        setting = self._discord.allow_dms
        if setting is not None:
            return setting
        rules = self._discord
        return not (rules.allowed_guilds or rules.allowed_channels or rules.allowed_roles)

    def _discord_refusal(self, who: Requester) -> Text | None:
        rules = self._discord
        if who.direct or who.workspace is None:
            return None if self.dms_allowed() else NOT_IN_DMS
        if rules.allowed_guilds and who.workspace not in rules.allowed_guilds:
            return NOT_THIS_SERVER
        if rules.allowed_channels and not _meets({who.channel, who.parent_channel}, rules.allowed_channels):
            return NOT_THIS_CHANNEL
        if rules.allowed_roles and not _meets(who.roles, rules.allowed_roles):
            return NEEDS_ROLE
        return None

    def _slack_refusal(self, who: Requester) -> Text | None:
        rules = self._slack
        if rules.allowed_workspaces and who.workspace not in rules.allowed_workspaces:
            return NOT_THIS_WORKSPACE
        if rules.allowed_channels and who.channel not in rules.allowed_channels:
            return NOT_THIS_SLACK_CHANNEL
        if rules.allowed_users and who.user not in rules.allowed_users:
            return NOT_ON_THE_LIST
        return None


def _meets(have: Collection[str | None], allowed: Collection[str]) -> bool:
    return any(item is not None and item in allowed for item in have)
