"""The session's end, as a person in the call sees it: a warning in advance, then the
call ends with words that say the booked time is over (not that someone ended it)."""

from __future__ import annotations

import pytest

from signaling.store import MemoryStore
from signaling.tokens import TokenService
from tests.browser.harness import Server, join

# Warn as soon as anyone is in: the session below lasts only seconds.
WARN_AT_ONCE = {"ROUNDTABLE_END_WARNING_SECONDS": "86400"}


@pytest.mark.parametrize("server", [WARN_AT_ONCE], indirect=True)
@pytest.mark.parametrize("size", [(1280, 720), (360, 640)], ids=["desktop", "phone"])
async def test_the_page_warns_before_the_session_ends_and_says_why_it_ended(
    server: Server, launch, size: tuple[int, int]
) -> None:
    # A room opened by its first token ends when that token does (docs/protocol.md).
    token, _ = TokenService(server.secret, MemoryStore()).issue(
        room=f"r_short{size[0]}", role="caseworker", name="Frau B", ttl=30
    )
    caseworker = await launch("caseworker", width=size[0], height=size[1])
    await join(caseworker, f"{server.base_url}/join#token={token}")
    banner = caseworker.page.get_by_test_id("session-banner")
    await banner.wait_for(timeout=15000)
    assert await banner.inner_text() == "Das Gespräch endet in einer Minute."
    assert "endet in einer Minute" in await caseworker.page.get_by_test_id("messages").inner_text()
    message = caseworker.page.get_by_test_id("error-message")
    await message.wait_for(timeout=45000)
    assert await message.get_attribute("data-error") == "session_expired"
    assert "vereinbarte Zeit" in await message.inner_text()
    assert await message.is_visible()
