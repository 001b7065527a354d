"""Image requests: /image, routing of plain messages, the classifiers, and the console end to end.

The image model and the Yandex classifier are the real httpx clients against the fake Yandex
server; the text model is the real local model.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.app import make_classifier
from bot.dialog import IMAGE_SETUP_HINT, DialogManager
from bot.events import FinalText, ImageReply, Incoming, Notice, ReplyEvent
from bot.models.base import GenerationOptions, TextModel
from bot.models.local import LocalModel
from bot.models.yandex import YandexClient, YandexCredentials, YandexImageModel
from bot.prompts.library import PromptLibrary
from bot.routing import ModelClassifier, RuleClassifier, YandexClassifier, matches_rules
from bot.settings import Settings
from bot.stores import DialogStore
from tests.conftest import script_finishes
from tests.doubles import Recording, Scripted
from tests.fakes import FakeYandex, Fault
from tests.fakes.yandex_server import JPEG_MAGIC

SHORT = GenerationOptions(max_tokens=24, temperature=0)
IMAGE = "/foundationModels/v1/imageGenerationAsync"
CLASSIFY = "/foundationModels/v1/fewShotTextClassification"


@pytest.mark.parametrize(
    "text",
    [
        "draw a cat",
        "Please draw me a lighthouse",
        "Can you paint a sunset over the sea?",
        "generate an image of a red car",
        "make me a picture of two dogs",
        "нарисуй кота",
        "Нарисуйте, пожалуйста, дом у озера",
        "сгенерируй картинку с драконом",
        "изобрази закат",
        "create a picture of a sunset",
        "paint me a dragon over a castle",
        "can you draw a cat?",
        "Could you please generate an image of a castle at night?",
        "Hi! Draw a robot",
        "now draw it in blue",
        "I'd like a picture of a fox in the snow",
        "I want you to draw a horse",
        "generate a realistic image of a tiger",
        "Draw cats playing poker",
        "пожалуйста, нарисуй кота",
        "можешь нарисовать кота?",
        "Не могли бы вы нарисовать море",
        "а теперь нарисуй собаку",
        "Сделай мне, пожалуйста, картинку с котом",
        "сгенерируй красивую картинку",
    ],
)
def test_rules_recognise_picture_requests(text: str) -> None:
    assert matches_rules(text)


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "How do I draw conclusions from data?",
        "Explain withdrawal symptoms",
        "Напиши статью о рисовании",
        "translate: the picture frame is broken",
        "Привет! Как дела?",
        "Draw up a contract for renting a flat",
        "Can you draw a conclusion from these numbers?",
        "Render this markdown table as HTML",
        "Illustrate recursion with a Python example",
        # Questions about images, and "image" in its technical senses.
        "How to create an image of a VM in Yandex Cloud?",
        "Docker: how do I create an image from a container?",
        "How do I make an image of my disk with dd?",
        "Create a Docker image for my Flask app",
        "Make an image of my disk with dd",
        "Create an image tag in HTML",
        "Make this picture smaller",
        "What does this image show?",
        "How do I draw a cat?",
        "Can you draw?",
        "Can you generate images?",
        "How to say 'draw a cat' in French?",
        # Statements, titles, and the other senses of draw and paint.
        "Who wrote The Picture of Dorian Gray?",
        "My picture of a cat won a prize",
        "Paint is peeling off my wall, what to do?",
        "Paint the walls or wallpaper them?",
        "Can you draw blood from a vein at home?",
        "Sketch keeps crashing on my Mac",
        # Russian.
        "рисунок с котом - что он значит?",
        "Как нарисовать кота карандашом?",
        "Ты умеешь рисовать?",
        "Я нарисовал кота, оцени",
        "Можешь объяснить, как нарисовать кота?",
        "Как сказать «нарисуй кота» по-английски?",
        "Картинка не загружается, что делать?",
        "Создай образ диска",
        "Сделай эту картинку ярче",
    ],
)
def test_rules_leave_text_requests_alone(text: str) -> None:
    assert not matches_rules(text)


@pytest.fixture
async def fake() -> AsyncIterator[FakeYandex]:
    async with FakeYandex() as server:
        yield server


@pytest.fixture
async def client(fake: FakeYandex) -> AsyncIterator[YandexClient]:
    credentials = YandexCredentials(
        folder_id=fake.folder_id, api_key=SecretStr(fake.api_key), iam_token=None
    )
    c = YandexClient(credentials, fm_url=fake.llm_url, operations_url=fake.operations_url)
    yield c
    await c.aclose()


def art(client: YandexClient) -> YandexImageModel:
    return YandexImageModel(client, f"art://{client.folder_id}/yandex-art/latest", seed=7)


def drawing_manager(
    store: DialogStore, model: TextModel, prompts_dir: Path, client: YandexClient
) -> DialogManager:
    """A manager with YandexART and Yandex few-shot routing, against the fake."""
    return DialogManager(
        store,
        model,
        PromptLibrary(prompts_dir),
        options=SHORT,
        image_model=art(client),
        classifier=YandexClassifier(client),
    )


async def collect(manager: DialogManager, chat: str, text: str) -> list[ReplyEvent]:
    return [event async for event in manager.handle(Incoming(chat, text))]


async def test_image_command_goes_to_the_image_model_verbatim(
    local_model: LocalModel,
    client: YandexClient,
    fake: FakeYandex,
    store: DialogStore,
    prompts_dir: Path,
) -> None:
    recording = Recording(local_model)
    manager = DialogManager(
        store, recording, PromptLibrary(prompts_dir), options=SHORT, image_model=art(client)
    )
    events = await collect(manager, "c", "/image a red apple on a table, watercolor")
    progress, image = events
    assert isinstance(progress, Notice) and progress.progress == "image"
    assert isinstance(image, ImageReply) and image.data.startswith(JPEG_MAGIC)
    assert image.mime_type == "image/jpeg"
    [sent] = fake.requests_to(IMAGE)
    assert sent.body["messages"][0]["text"] == "a red apple on a table, watercolor"
    assert sent.body["generationOptions"]["seed"] in ("7", 7)
    assert recording.requests == []  # /image is used as the prompt, no rewrite
    turns = await store.read("c")
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].meta["kind"] == "image"
    [usage] = await collect(manager, "c", "/usage")
    assert isinstance(usage, Notice) and "1 images" in usage.text


async def test_plain_request_is_classified_rewritten_and_drawn(
    local_model: LocalModel,
    client: YandexClient,
    fake: FakeYandex,
    store: DialogStore,
    prompts_dir: Path,
) -> None:
    recording = Recording(local_model)
    manager = drawing_manager(store, recording, prompts_dir, client)
    events = await collect(manager, "c", "нарисуй кота в шляпе")
    assert isinstance(events[-1], ImageReply)
    [classified] = fake.requests_to(CLASSIFY)
    assert classified.body["text"] == "нарисуй кота в шляпе"
    assert set(classified.body["labels"]) == {"image request", "text request"}
    # The text model rewrote the request with the image-prompt template first.
    [rewrite] = recording.requests
    assert "prompts for an image generation model" in rewrite[0].text
    assert rewrite[-1].text == "нарисуй кота в шляпе"
    [sent] = fake.requests_to(IMAGE)
    prompt = sent.body["messages"][0]["text"]
    assert prompt and len(prompt) <= 500
    assert events[0] == Notice(f"Generating an image: {prompt}", progress="image")


async def test_text_question_is_answered_as_text(
    local_model: LocalModel,
    client: YandexClient,
    fake: FakeYandex,
    store: DialogStore,
    prompts_dir: Path,
) -> None:
    manager = drawing_manager(store, local_model, prompts_dir, client)
    events = await collect(manager, "c", "what is the capital of France?")
    assert isinstance(events[-1], FinalText)
    assert len(fake.requests_to(CLASSIFY)) == 1
    assert fake.requests_to(IMAGE) == []


async def test_classifier_failure_falls_back_to_rules(
    client: YandexClient, fake: FakeYandex
) -> None:
    fake.inject(Fault("status", status=400, message="bad"), times=10, path=CLASSIFY)
    classifier = YandexClassifier(client)
    assert await classifier("draw a cat") is True
    assert await classifier("what time is it") is False
    assert len(fake.requests_to(CLASSIFY)) == 2


async def test_rate_limited_classifier_falls_back_at_once(
    fake: FakeYandex, client: YandexClient, store: DialogStore, prompts_dir: Path
) -> None:
    # The classifier as the app builds it: a 429 is not retried (each retry would keep the
    # user waiting seconds before the answer starts), the rules decide instead.
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        yandex_api_key=SecretStr(fake.api_key),
        yandex_folder_id=fake.folder_id,
        yandex_iam_token=None,
        yandex_fm_url=fake.llm_url,
        yandex_operations_url=fake.operations_url,
        image_classifier="yandex",
    )
    fake.inject(Fault("status", status=429, retry_after=1.0), times=10, path=CLASSIFY)
    text_model = Recording(Scripted(["Four."]))
    manager = DialogManager(
        store,
        text_model,
        PromptLibrary(prompts_dir),
        options=SHORT,
        image_model=art(client),
        classifier=make_classifier(settings, text_model),
    )
    try:
        events = await collect(manager, "c", "What is 2+2?")
        assert events[-1] == FinalText("Four.")
        assert len(fake.requests_to(CLASSIFY)) == 1
        events = await collect(manager, "c", "draw a cat")  # the rules still route pictures
        assert isinstance(events[-1], ImageReply)
        assert len(fake.requests_to(CLASSIFY)) == 2
        assert len(fake.requests_to(IMAGE)) == 1
    finally:
        await manager.classifier.aclose()


async def test_question_about_a_disk_image_is_answered_as_text(
    client: YandexClient, fake: FakeYandex, store: DialogStore, prompts_dir: Path
) -> None:
    # The default rules with an image model configured: a question with "image" in it is text.
    text_model = Recording(Scripted(["Use dd if=/dev/sda of=disk.img bs=4M."]))
    manager = DialogManager(
        store, text_model, PromptLibrary(prompts_dir), options=SHORT, image_model=art(client)
    )
    events = await collect(manager, "c", "How do I make an image of my disk with dd?")
    assert events[-1] == FinalText("Use dd if=/dev/sda of=disk.img bs=4M.")
    assert [r[-1].text for r in text_model.requests] == [
        "How do I make an image of my disk with dd?"
    ]
    assert fake.requests_to(IMAGE) == []


async def test_model_classifier_uses_the_text_model(prompts_dir: Path) -> None:
    assert await ModelClassifier(Scripted(["Yes"]))("make it pretty") is True
    assert await ModelClassifier(Scripted(["no."]))("draw a cat") is False
    assert await ModelClassifier(Scripted(["maybe"]))("draw a cat") is True  # rules decide


async def test_without_an_image_model_the_user_learns_how_to_configure_one(
    store: DialogStore, prompts_dir: Path
) -> None:
    recording = Recording(Scripted(["Here is a cat: =^.^="]))
    manager = DialogManager(store, recording, PromptLibrary(prompts_dir), options=SHORT)
    assert await collect(manager, "c", "/image a cat") == [Notice(IMAGE_SETUP_HINT, "warning")]
    assert "FMBOT_IMAGE_MODEL" in IMAGE_SETUP_HINT
    assert recording.requests == []
    # Plain messages all go to the text model: nothing is refused for looking like a picture.
    events = await collect(manager, "c", "draw a cat")
    assert events[-1] == FinalText("Here is a cat: =^.^=")
    assert len(recording.requests) == 1


async def test_failed_generation_is_reported_and_not_stored(
    client: YandexClient, fake: FakeYandex, store: DialogStore, prompts_dir: Path
) -> None:
    fake.inject(Fault("operation_error", grpc_code=3, message="prompt refused"), path=IMAGE)
    manager = DialogManager(
        store, Scripted(["x"]), PromptLibrary(prompts_dir), options=SHORT, image_model=art(client)
    )
    events = await collect(manager, "c", "/image something")
    assert isinstance(events[-1], Notice) and events[-1].kind == "error"
    assert events[-1].text.startswith("The image could not be generated:")
    assert await store.read("c") == []


async def test_rules_classifier_is_the_default(store: DialogStore, prompts_dir: Path) -> None:
    manager = DialogManager(store, Scripted(["x"]), PromptLibrary(prompts_dir))
    assert isinstance(manager.classifier, RuleClassifier)


async def test_console_end_to_end_saves_images(fake: FakeYandex, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "YANDEX_"))}
    env |= {
        "FMBOT_HOME": str(tmp_path / "home"),
        "FMBOT_MAX_TOKENS": "24",
        "FMBOT_IMAGE_MODEL": "yandex:yandex-art/latest",
        "YANDEX_API_KEY": fake.api_key,
        "YANDEX_FOLDER_ID": fake.folder_id,
        "YANDEX_FM_URL": fake.llm_url,
        "YANDEX_OPERATIONS_URL": fake.operations_url,
    }
    fmbot = str(Path(sys.executable).parent / "fmbot")
    # An asyncio subprocess keeps this event loop (and so the fake server) running meanwhile.
    proc = await asyncio.create_subprocess_exec(
        fmbot,
        "console",
        "--chat",
        "pics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(
        proc.communicate("/image a lighthouse\nнарисуй кота\nWhat is 2+2?\n".encode()), 120
    )
    assert proc.returncode == 0, err.decode()
    stdout = out.decode()
    saved = re.findall(r"\[image: (.+?)\]", stdout)
    assert len(saved) == 2, stdout
    for path in saved:
        assert Path(path).read_bytes().startswith(JPEG_MAGIC)
    assert "Generating an image: a lighthouse" in stdout
    assert len(fake.requests_to(IMAGE)) == 2
    assert len(fake.requests_to(CLASSIFY)) == 2  # auto: Yandex is in use, so Yandex few-shot
    assert fake.api_key not in stdout + err.decode()


def test_the_rules_take_long_adversarial_messages_in_one_pass(tmp_path: Path) -> None:
    """Every plain message goes through the rules: a pattern that backtracks (the rules' first
    draft took 40 s on ``"and " * 5000``) would hold a chat per message. In a process of its
    own with a timeout, so such a pattern fails here in seconds."""
    script = "\n".join(
        [
            "from bot.routing import matches_rules",
            "words = ['and ', 'please ', 'draw ', 'a ', 'image ', 'нарисуй ', ', ', 'of ']",
            "for word in words:",
            "    for text in (word * 5000, 'draw ' + word * 5000, word * 5000 + 'draw a cat'):",
            "        matches_rules(text)",
            "print('ok')",
        ]
    )
    script_finishes(script, tmp_path)
