"""The Telegram channel's pure parts (splitting, settings, access, addressing, redaction) and the
fake Bot API server's own checks, exercised through aiogram's real client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import BufferedInputFile, Message, MessageEntity, User

from adapters.telegram.access import AccessPolicy
from adapters.telegram.addressing import addressed, strip_mention
from adapters.telegram.formatting import markdown_parts
from adapters.telegram.redact import secrets_redacted
from adapters.telegram.settings import TelegramSettings, load_telegram_settings
from adapters.telegram.splitting import split, truncate, utf16_len
from bot.errors import ConfigError
from tests.fakes.telegram_server import BOT_ID, BOT_USERNAME, NOT_MODIFIED, FakeTelegram

TOKEN = "123456789:AAHfakeTokenForTests-0123456789abcdEF"
ME = User(id=BOT_ID, is_bot=True, first_name="fmbot", username=BOT_USERNAME)


@pytest.fixture(autouse=True)
def _no_telegram_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TELEGRAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))  # no stray .env


# --- splitting ------------------------------------------------------------------------------


def test_split_prefers_paragraphs_then_sentences_and_keeps_every_character() -> None:
    paragraph = "First sentence here. " * 10 + "\nA single line break.\n"
    text = "\n\n".join([paragraph.strip()] * 30)
    parts = split(text, limit=1000)
    assert "".join(p.text for p in parts) == text
    assert all(utf16_len(p.text) <= 1000 for p in parts)
    assert all(p.text.endswith("\n\n") for p in parts[:-1])  # blank lines, not single ones

    # A blank line past half the budget wins over a later single line break.
    text = "a" * 600 + "\n\n" + "b" * 300 + "\n" + "c" * 300
    assert [len(p.text) for p in split(text, limit=1000)] == [602, 601]

    prose = "Alpha beta gamma. " * 200
    parts = split(prose, limit=500)
    assert "".join(p.text for p in parts) == prose
    assert all(p.text.endswith(". ") for p in parts[:-1])


def test_split_counts_utf16_and_never_cuts_a_character() -> None:
    text = "😀" * 5000  # two UTF-16 units each, no boundaries at all
    parts = split(text)
    assert [utf16_len(p.text) for p in parts] == [4096, 4096, 1808]
    assert "".join(p.text for p in parts) == text


def test_split_clips_an_entity_it_must_cut_so_each_part_is_valid() -> None:
    code = "\n".join(f"line {i} = {i * i}" for i in range(600))
    text = "Intro.\n\n" + code + "\n\nOutro."
    pre = MessageEntity(type="pre", offset=8, length=utf16_len(code), language="python")
    parts = split(text, [pre], limit=4096)
    assert len(parts) >= 2 and "".join(p.text for p in parts) == text
    for part in parts:
        for e in part.entities:
            assert e.offset >= 0 and e.offset + e.length <= utf16_len(part.text)
            assert e.type == "pre" and e.language == "python"
    # The cut inside the code block falls at a line end, not mid-line.
    assert parts[0].text.endswith("\n")


def test_markdown_parts_turn_markdown_into_entities() -> None:
    (part,) = markdown_parts("Some **bold**, `code` and [a link](https://example.org).")
    assert part.text == "Some bold, code and a link."
    kinds = {e.type: part.text[e.offset : e.offset + e.length] for e in part.entities}
    assert kinds == {"bold": "bold", "code": "code", "text_link": "a link"}
    (half,) = markdown_parts("**unfinished bold and `code")
    assert half.text.strip() and all(e.length > 0 for e in half.entities)


def test_truncate_marks_the_cut() -> None:
    assert truncate("short", 10) == "short"
    cut = truncate("x" * 2000, 1024)
    assert utf16_len(cut) <= 1024 and cut.endswith("…")


# --- settings and access --------------------------------------------------------------------


def test_missing_token_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_telegram_settings()
    assert caught.value.setting == "TELEGRAM_BOT_TOKEN"
    assert "set TELEGRAM_BOT_TOKEN to the token from @BotFather" in str(caught.value)


def test_malformed_token_is_rejected_without_being_quoted() -> None:
    with pytest.raises(ConfigError) as caught:
        load_telegram_settings(TELEGRAM_BOT_TOKEN="not-a-token-secret")
    assert "not-a-token-secret" not in str(caught.value)


def test_settings_lists_intervals_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_ALLOWED_USERS", " 42, @Alice ,bob_b")
    monkeypatch.setenv("TELEGRAM_API_URL", "http://127.0.0.1:8081/")
    settings = load_telegram_settings()
    assert settings.allowed_users == ("42", "@Alice", "bob_b")
    assert settings.api_url == "http://127.0.0.1:8081"
    assert (settings.interval_for(True), settings.interval_for(False)) == (1.0, 3.0)
    secret = settings.secret_token()
    assert secret == load_telegram_settings().secret_token()  # stable across restarts
    assert TOKEN.split(":")[1] not in secret and len(secret) == 64
    monkeypatch.setenv("TELEGRAM_ADMINS", "4 2")
    with pytest.raises(ConfigError) as caught:
        load_telegram_settings()
    assert caught.value.setting == "TELEGRAM_ADMINS"


def test_a_local_bot_api_server_is_declared_with_its_file_mapping() -> None:
    def load(**env: str) -> TelegramSettings:
        return load_telegram_settings(_env_file=None, TELEGRAM_BOT_TOKEN=TOKEN, **env)

    assert (load().api_local, load().api_local_files) == (False, None)
    local = load(TELEGRAM_API_LOCAL="true", TELEGRAM_API_LOCAL_FILES="/var/lib/tg:/srv/tg")
    assert local.api_local and local.api_local_files == (Path("/var/lib/tg"), Path("/srv/tg"))
    bad = [
        ("TELEGRAM_API_LOCAL", {"TELEGRAM_API_LOCAL": "maybe"}, "runs with --local"),
        ("TELEGRAM_API_LOCAL_FILES", {"TELEGRAM_API_LOCAL_FILES": "/a:/b"}, "LOCAL=true too"),
        (
            "TELEGRAM_API_LOCAL_FILES",
            {"TELEGRAM_API_LOCAL": "1", "TELEGRAM_API_LOCAL_FILES": "tg:/srv/tg"},
            "two absolute paths",
        ),
        (
            "TELEGRAM_API_LOCAL_FILES",
            {"TELEGRAM_API_LOCAL": "1", "TELEGRAM_API_LOCAL_FILES": "/var/lib/tg"},
            "two absolute paths",
        ),
    ]
    for name, env, said in bad:
        with pytest.raises(ConfigError) as caught:
            load(**env)
        assert caught.value.setting == name and said in str(caught.value)
        assert "\n" not in str(caught.value) and TOKEN not in str(caught.value)


def test_access_policy() -> None:
    settings = TelegramSettings(
        _env_file=None,
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_ALLOWED_USERS="@alice,7",
        TELEGRAM_ADMINS="9",
    )
    policy = AccessPolicy.from_settings(settings)
    alice = User(id=1, is_bot=False, first_name="A", username="ALICE")
    seven = User(id=7, is_bot=False, first_name="S")
    admin = User(id=9, is_bot=False, first_name="Boss")
    other = User(id=8, is_bot=False, first_name="O", username="mallory")
    assert [policy.allows(u) for u in (alice, seven, admin, other, None)] == [
        True, True, True, False, False,
    ]  # fmt: skip
    assert policy.may_change_shared(alice, private=True)
    assert not policy.may_change_shared(alice, private=False)
    assert policy.may_change_shared(admin, private=False)
    assert policy.is_admin(admin) and not policy.is_admin(alice)
    open_policy = AccessPolicy.from_settings(
        TelegramSettings(_env_file=None, TELEGRAM_BOT_TOKEN=TOKEN)
    )
    assert open_policy.allows(other) and open_policy.may_change_shared(other, private=False)
    assert open_policy.allows(None)  # sent on behalf of a chat: only an allow-list needs a user


# --- addressing -----------------------------------------------------------------------------


def _group_message(text: str, entities: list[dict[str, object]], **extra: object) -> Message:
    return Message.model_validate(
        {
            "message_id": 5,
            "date": 0,
            "chat": {"id": -1, "type": "supergroup", "title": "G"},
            "from": {"id": 3, "is_bot": False, "first_name": "B"},
            "text": text,
            "entities": entities,
            **extra,
        }
    )


def test_group_addressing() -> None:
    def mention(text: str, word: str) -> dict[str, object]:
        return {"type": "mention", "offset": text.index(word), "length": len(word)}

    text = f"hi @{BOT_USERNAME} there"
    assert addressed(_group_message(text, [mention(text, f"@{BOT_USERNAME}")]), ME)
    assert not addressed(_group_message("hi @someone", [mention("hi @someone", "@someone")]), ME)
    command = [{"type": "bot_command", "offset": 0, "length": 5}]
    assert addressed(_group_message("/help", command), ME)
    other = [{"type": "bot_command", "offset": 0, "length": 15}]
    assert not addressed(_group_message("/help@other_bot", other), ME)
    # A bare command this bot does not have belongs to another bot in the group.
    weather = [{"type": "bot_command", "offset": 0, "length": 8}]
    assert not addressed(_group_message("/weather", weather), ME)
    text = f"/weather @{BOT_USERNAME}"
    assert addressed(_group_message(text, [*weather, mention(text, f"@{BOT_USERNAME}")]), ME)
    ours = [{"type": "bot_command", "offset": 0, "length": 9 + len(BOT_USERNAME)}]
    assert addressed(_group_message(f"/weather@{BOT_USERNAME}", ours), ME)
    bot_message = {
        "message_id": 1,
        "date": 0,
        "chat": {"id": -1, "type": "supergroup"},
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "fmbot"},
        "text": "x",
    }
    assert addressed(_group_message("so?", [], reply_to_message=bot_message), ME)
    assert strip_mention(f"@{BOT_USERNAME.upper()}  what is  up", ME) == "what is up"
    assert strip_mention(f"mail me@{BOT_USERNAME}.org", ME) == f"mail me@{BOT_USERNAME}.org"


# --- redaction ------------------------------------------------------------------------------


def test_redaction_covers_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("aiogram.dispatcher")
    with secrets_redacted(TOKEN):
        logger.error("url=%s", f"https://api.telegram.org/bot{TOKEN}/getMe")
        try:
            raise RuntimeError(f"boom at /bot{TOKEN}/getUpdates")
        except RuntimeError:
            logger.exception("failed")
    logger.error("after: %s", "no filter any more")
    assert TOKEN not in caplog.text
    assert caplog.text.count("<redacted>") == 2
    assert not logger.filters


# --- the fake server's own checks (so the end-to-end tests can trust it) ------------------


@pytest.fixture
async def fake_bot() -> AsyncIterator[tuple[FakeTelegram, Bot]]:
    async with FakeTelegram() as fake:
        session = AiohttpSession(api=TelegramAPIServer.from_base(fake.base_url))
        bot = Bot(fake.token, session=session)
        try:
            yield fake, bot
        finally:
            await bot.session.close()


@pytest.mark.parametrize(
    ("mode", "text", "problem"),
    [
        ("HTML", "<b>unclosed", 'Can\'t find end tag corresponding to start tag "b"'),
        ("HTML", "<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("HTML", "<blink>x</blink>", 'Unsupported start tag "blink" at byte offset 0'),
        ("HTML", "a &nbsp; b", 'Unsupported HTML entity "&nbsp;"'),
        ("MarkdownV2", "Version 1.5", "Character '.' is reserved"),
        ("MarkdownV2", "*bold", "Can't find end of Bold entity at byte offset 0"),
        ("MarkdownV2", "a `code", "Can't find end of Code entity at byte offset 2"),
        ("Markdown", "_italic", "Can't find end of the entity starting at byte offset 0"),
    ],
)
async def test_fake_rejects_broken_markup(
    fake_bot: tuple[FakeTelegram, Bot], mode: str, text: str, problem: str
) -> None:
    fake, bot = fake_bot
    chat = fake.private_chat(fake.user(5))
    with pytest.raises(TelegramBadRequest) as caught:
        await bot.send_message(chat["id"], text, parse_mode=mode)
    assert "can't parse entities" in caught.value.message and problem in caught.value.message


async def test_fake_accepts_valid_markup_and_enforces_limits(
    fake_bot: tuple[FakeTelegram, Bot],
) -> None:
    fake, bot = fake_bot
    chat = fake.private_chat(fake.user(6))
    html = await bot.send_message(chat["id"], "<b>bold</b> &amp; <i>it</i>", parse_mode="HTML")
    assert html.text == "bold & it" and html.message_id == 1
    md = await bot.send_message(chat["id"], r"*bold* 1\.5 `a.b`", parse_mode="MarkdownV2")
    assert md.text == "bold 1.5 a.b" and md.message_id == 2
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(chat["id"], "x" * 4097)
    await bot.send_message(chat["id"], "😀" * 2048)  # 4096 UTF-16 units: fits
    with pytest.raises(TelegramBadRequest, match="outside the text"):
        bad = MessageEntity(type="bold", offset=3, length=5)
        await bot.send_message(chat["id"], "abcd", entities=[bad])
    with pytest.raises(TelegramBadRequest, match="caption is too long"):
        photo = BufferedInputFile(b"\x89PNG", "a.png")
        await bot.send_photo(chat["id"], photo, caption="c" * 1025)
    with pytest.raises(TelegramBadRequest) as caught:
        await bot.edit_message_text("bold & it", chat_id=chat["id"], message_id=html.message_id)
    assert caught.value.message == NOT_MODIFIED
    group = fake.group(-5)
    with pytest.raises(TelegramBadRequest, match="only for private chats"):
        await bot.send_message_draft(group["id"], 1, text="x")
    with pytest.raises(TelegramBadRequest, match="thread not found"):
        await bot.send_message(group["id"], "x", message_thread_id=77)


# --- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "TELEGRAM_BOT_TOKEN=(not set) is not valid: set TELEGRAM_BOT_TOKEN to the token"),
        (["--webhook", "http://example.org/hook"], {"TELEGRAM_BOT_TOKEN": TOKEN}, "https://"),
        (["--listen", "nowhere"], {"TELEGRAM_BOT_TOKEN": TOKEN}, "--listen='nowhere'"),
    ],
)
def test_cli_reports_configuration_errors(
    args: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: object,
) -> None:
    from adapters.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FMBOT_HOME", str(tmp_path))
    monkeypatch.setenv("FMBOT_STORE", "memory://")
    monkeypatch.setattr("sys.argv", ["fmbot", "telegram", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    err = capsys.readouterr().err
    assert caught.value.code == 2, err
    assert message in err and TOKEN not in err
