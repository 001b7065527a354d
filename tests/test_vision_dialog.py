"""Turns that carry pictures, in the dialog manager: routing to the vision model, follow-up
questions, history by reference, refusals. Models are the echo model behind Recording (the
public TextModel interface); pictures are real files, normalised by Pillow."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from bot.dialog import VISION_SETUP_HINT, DialogManager
from bot.events import FinalText, Incoming, Notice, ReplyEvent
from bot.models.base import GenerationOptions
from bot.models.echo import EchoModel
from bot.pictures import MediaDir, Pictures
from bot.prompts.library import PromptLibrary
from bot.stores.base import DialogStore
from tests.doubles import Recording

CHAT = "vision-chat"


def photo(path: Path, size: tuple[int, int] = (4000, 3000), colour: str = "red") -> Path:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    path.write_bytes(out.getvalue())
    return path


async def turn(manager: DialogManager, text: str, *pictures: Path) -> list[ReplyEvent]:
    sources = tuple(f"file:{p}" for p in pictures)
    return [e async for e in manager.handle(Incoming(CHAT, text, pictures=sources))]


def notices(events: list[ReplyEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Notice)]


def build(
    store: DialogStore,
    prompts_dir: Path,
    tmp_path: Path,
    *,
    vision: bool = True,
    window: int = 4096,
) -> tuple[DialogManager, Recording, Recording | None]:
    text = Recording(EchoModel(name="echo:text"))
    seeing = Recording(EchoModel(name="echo:vision", context_window=window)) if vision else None
    manager = DialogManager(
        store,
        text,
        PromptLibrary(prompts_dir),
        options=GenerationOptions(max_tokens=16),
        vision_model=seeing,
        pictures=Pictures(MediaDir(tmp_path / "media")),
    )
    return manager, text, seeing


async def test_without_a_vision_model_a_picture_gets_the_setup_hint_and_the_chat_goes_on(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, text, _ = build(store, prompts_dir, tmp_path, vision=False)
    events = await turn(manager, "what is this?", photo(tmp_path / "p.jpg"))
    assert notices(events) == [VISION_SETUP_HINT]
    assert "FMBOT_VISION_MODEL" in VISION_SETUP_HINT
    assert text.requests == [] and await store.read(CHAT) == []
    assert not (tmp_path / "media").exists()  # nothing fetched or kept for nobody
    events = await turn(manager, "hello")
    assert [e.text for e in events if isinstance(e, FinalText)] != []
    assert len(text.requests) == 1


async def test_a_picture_goes_downscaled_to_the_vision_model_and_follow_ups_keep_it(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, text, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    plant = photo(tmp_path / "plant.jpg")
    await turn(manager, "what is wrong with this plant?", plant)
    [request] = seeing.requests
    [sent] = request[-1].pictures
    assert (sent.width, sent.height, sent.mime_type) == (1568, 1176, "image/jpeg")
    assert Image.open(io.BytesIO(sent.data)).size == (1568, 1176)
    assert request[-1].text.endswith("what is wrong with this plant?")
    assert text.requests == []

    plant.unlink()  # the follow-up is answered from the stored copy
    await turn(manager, "and how do I fix it?")
    follow_up = seeing.requests[-1]
    with_pictures = [m for m in follow_up if m.pictures]
    assert len(with_pictures) == 1 and with_pictures[0].pictures[0].data == sent.data
    assert follow_up[-1].pictures == ()  # the picture stays with the message that brought it

    stored = await store.read(CHAT)
    refs = stored[0].meta["pictures"]
    assert isinstance(refs, list) and refs[0]["source"] == f"file:{plant}"
    assert "data" not in refs[0] and len(str(refs[0]["sha256"])) == 64  # a reference, no bytes

    await turn(manager, "/new")
    await turn(manager, "something else")
    assert len(text.requests) == 1 and not any(m.pictures for m in text.requests[0])


async def test_a_new_picture_replaces_the_earlier_one(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, _, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    await turn(manager, "first", photo(tmp_path / "a.jpg", (100, 100), "red"))
    await turn(manager, "second", photo(tmp_path / "b.jpg", (200, 100), "blue"))
    await turn(manager, "compare?")
    seen = [p for m in seeing.requests[-1] for p in m.pictures]
    assert [(p.width, p.height) for p in seen] == [(200, 100)]


async def test_several_pictures_and_no_caption_ask_the_templates_request(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, _, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    await turn(manager, "", photo(tmp_path / "a.jpg", (100, 100)), photo(tmp_path / "b.jpg"))
    last = seeing.requests[-1][-1]
    assert len(last.pictures) == 2 and last.text.endswith("Describe this picture.")
    user, _ = await store.read(CHAT)
    assert user.text == "Describe this picture." and len(user.meta["pictures"]) == 2  # type: ignore[arg-type]


async def test_an_unreadable_picture_gets_a_reason_and_no_model_call(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, text, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo(tmp_path / "ok.jpg").read_bytes()[:500])
    assert notices(await turn(manager, "what?", broken)) == [
        "This picture is damaged and cannot be read. Please send it again or try another."
    ]
    assert notices(await turn(manager, "what?", tmp_path / "nope.png")) == [
        f"There is no file {tmp_path / 'nope.png'}."
    ]
    assert seeing.requests == [] and text.requests == [] and await store.read(CHAT) == []


async def test_a_picture_that_falls_out_of_the_window_leaves_the_chat_to_the_text_model(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    # 1,500 tokens a picture in a 2,000-token window: a few exchanges push it out.
    manager, text, seeing = build(store, prompts_dir, tmp_path, window=2000)
    assert seeing is not None
    await turn(manager, "look", photo(tmp_path / "a.jpg", (100, 100)))
    for i in range(12):
        await turn(manager, f"message {i} " + "word " * 30)
    assert text.requests, "once the picture no longer fits, the text model answers"
    assert not any(m.pictures for m in text.requests[-1])


async def test_forget_deletes_the_stored_pictures(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, _, _ = build(store, prompts_dir, tmp_path)
    await turn(manager, "hi", photo(tmp_path / "a.jpg", (100, 100)))
    media = MediaDir(tmp_path / "media")
    assert media.count(CHAT) == 1
    [reply] = notices(await turn(manager, "/forget"))
    assert "pictures" in reply and media.count(CHAT) == 0


async def test_a_caption_is_a_question_not_a_command(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, _, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    await turn(manager, "/forget this background", photo(tmp_path / "a.jpg", (100, 100)))
    assert len(seeing.requests) == 1 and len(await store.read(CHAT)) == 2


async def test_more_pictures_than_the_window_takes_ask_for_fewer(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, _, seeing = build(store, prompts_dir, tmp_path, window=4096)
    assert seeing is not None
    pictures = [photo(tmp_path / f"{i}.jpg", (40, 40)) for i in range(3)]
    [said] = notices(await turn(manager, "compare", *pictures))
    assert said.startswith("These 3 pictures and your message need about ")
    assert said.endswith("Please send fewer pictures at once.")
    assert seeing.requests == []


async def test_a_follow_up_sees_the_earlier_pictures_still_there_and_is_told_once_of_others(
    store: DialogStore, prompts_dir: Path, tmp_path: Path
) -> None:
    manager, _, _ = build(store, prompts_dir, tmp_path)
    a, b = photo(tmp_path / "a.jpg", (100, 100)), photo(tmp_path / "b.jpg", (200, 100))
    await turn(manager, "compare", a, b)
    [asked, _] = await store.read(CHAT)
    refs = asked.meta["pictures"]
    assert isinstance(refs, list)
    media = tmp_path / "media"
    # A restart (nothing cached); the first picture's file and copy are gone since.
    a.unlink()
    [copy_a] = media.glob(f"*/{refs[0]['sha256']}.jpg")
    copy_a.unlink()
    manager, text, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    assert notices(await turn(manager, "and now?")) == [
        "I could not get 1 of the 2 pictures you sent earlier again, so this answer does not "
        "see it. Send it again to ask about it."
    ]
    seen = [p for m in seeing.requests[-1] for p in m.pictures]
    assert [(p.width, p.height) for p in seen] == [(200, 100)]
    # Told once: the next follow-up sees the second and says nothing of the first.
    manager, text, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    assert notices(await turn(manager, "and the second?")) == []
    seen = [p for m in seeing.requests[-1] for p in m.pictures]
    assert [(p.width, p.height) for p in seen] == [(200, 100)]
    # Then the second goes too: the text model answers, with the conversation's text.
    b.unlink()
    for copy in media.glob("*/*.jpg"):
        copy.unlink()
    manager, text, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    assert notices(await turn(manager, "and now?")) == [
        "I could not get the 2 pictures you sent earlier again, so this answer does not see "
        "them. Send them again to ask about them."
    ]
    assert seeing.requests == [] and len(text.requests) == 1
    assert next(m.text for m in text.requests[0] if m.role == "user") == "compare"
    # Once told, neither is fetched nor told of again (the file back would not change that).
    photo(tmp_path / "b.jpg", (200, 100))
    manager, text, seeing = build(store, prompts_dir, tmp_path)
    assert seeing is not None
    assert notices(await turn(manager, "and now?")) == []
    assert seeing.requests == [] and len(text.requests) == 1
