"""Money in messages: amounts under a cent keep their digits, in budget refusals and confirmations alike."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bot.budgets import BudgetExceededError, format_dollars
from bot.jobs import JobService
from bot.limits import Admission
from bot.models import GenerateRequest, JobContext
from bot.service import ImageService
from bot.settings import BudgetSettings, JobSettings, load_settings
from bot.store import ResultFiles, SQLiteJobStore
from tests.fakes.provider import FakeImages

ALICE = JobContext("discord", "alice", workspace="guild1", channel="c1")
NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (0, "$0.00"),
        (0.001, "$0.001"),
        (0.0042, "$0.0042"),
        (0.00588, "$0.0059"),
        (0.00001, "$0.00001"),
        (0.01, "$0.01"),
        (0.0639, "$0.06"),
        (12.5, "$12.50"),
        (1234.567, "$1,234.57"),
    ],
)
def test_format_dollars(amount: float, shown: str) -> None:
    assert format_dollars(amount) == shown


async def test_a_budget_of_a_tenth_of_a_cent_is_not_shown_as_zero(tmp_path: Path) -> None:
    settings = load_settings()
    images = ImageService(
        provider=FakeImages(),
        catalog=settings.catalog(),
        admission=Admission(max_concurrent=1, images_per_minute=0, per_user_jobs=1, max_queue=1),
        imaging_settings=settings.imaging,
        variation_prompt=settings.variation_prompt,
    )
    store = await SQLiteJobStore.open(tmp_path / "jobs.sqlite3")
    jobs = JobService(
        images=images,
        store=store,
        files=ResultFiles(tmp_path / "results"),
        jobs=JobSettings(),
        budgets=BudgetSettings(dollars_per_user_per_day=0.001),
        clock=lambda: NOON,
    )
    try:
        with pytest.raises(BudgetExceededError) as caught:
            await jobs.submit(ALICE, GenerateRequest(prompt="a fox", quality="low"))  # ≈ $0.00588
    finally:
        await store.close()
    assert caught.value.user_message.startswith(
        "This would go over your daily image budget of $0.001 (used $0.00, this request ≈ $0.0059)."
    )
