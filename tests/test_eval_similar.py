"""``similar``: cosine similarity with the configured embedder, the bundled e5 for real and the
OpenAI-compatible fake's /embeddings (whose requests prove the cache)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bot.eval.assertions import Assertion
from bot.eval.similarity import CachedEmbedder, SimilarJudge, cosine
from bot.kb.embedders import LocalE5Embedder
from tests.eval_helpers import env, fake, fmbot, graded, openai_env
from tests.fakes import FakeOpenAI, Fault

__all__ = ["env", "fake", "openai_env"]

WARRANTY = "Every kettle comes with a warranty of two years."


def write_suite(tmp_path: Path, cases: str, models: str = "['echo:']") -> Path:
    (tmp_path / "t.yaml").write_text("name: t\ninstruction: Be brief.\ntask: '{{ message }}'\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"templates: [t.yaml]\nmodels: {models}\nthreshold: 0.5\ncases:\n{cases}")
    return suite


def similar_of(row: dict[str, object]) -> dict[str, object]:
    return graded(row, "similar")


async def test_e5_passes_a_paraphrase_and_fails_another_topic(
    tmp_path: Path, env: dict[str, str]
) -> None:
    suite = write_suite(
        tmp_path,
        "  - message: The kettle has a two-year warranty.\n"
        f"    assert: [{{type: similar, value: '{WARRANTY}'}}]\n"
        "  - message: Parcels are delivered in three to five working days.\n"
        f"    assert: [{{type: similar, value: '{WARRANTY}', threshold: 0.9}}]\n",
    )
    out = tmp_path / "out"
    result = await fmbot(["eval", "run", str(suite), "-o", str(out)], env)
    assert result.returncode == 0, result.stdout + result.stderr  # 1 of 2 ≥ threshold 0.5
    rows = pq.read_table(out / "results.parquet").to_pylist()
    close, far = similar_of(rows[0]), similar_of(rows[1])
    assert close["pass"] is True and rows[0]["pass"] is True
    assert far["pass"] is False and rows[1]["pass"] is False
    assert isinstance(close["score"], float) and isinstance(far["score"], float)
    # e5 puts unrelated sentences around 0.8 (see the README): the far case needs 0.9.
    assert close["score"] >= 0.9 > far["score"] > 0.5
    assert str(close["reason"]).startswith(f"similarity {close['score']:.3f} ≥ 0.8 (local:e5)")
    assert "< 0.9 (local:e5)" in str(far["reason"])
    assert "similar" in result.stdout and "< 0.9 (local:e5)" in result.stdout  # failed cell
    # The vectors are cached: the value once, each reply once.
    cached = list((tmp_path / "home" / "cache" / "eval" / "embeddings").rglob("*.json"))
    assert len(cached) == 3


async def test_the_cache_spares_embedding_requests_and_the_score_is_the_similarity(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    suite = write_suite(
        tmp_path,
        "  - message: one\n"
        "    assert: [{type: similar, value: 'Echo: one'}]\n"
        "  - message: two\n"
        "    assert: [{type: similar, value: 'Echo: one', threshold: 0.99}]\n",
        models="['openai:gpt-test']",
    )
    env = openai_env | {"FMBOT_EMBED_MODEL": "openai:embed-test"}
    first = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "a")], env)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = pq.read_table(tmp_path / "a" / "results.parquet").to_pylist()
    # The fake's vectors are hashes of the text: the same text is similarity 1, another is not.
    assert similar_of(rows[0])["score"] == pytest.approx(1.0)
    assert similar_of(rows[0])["pass"] is True
    assert similar_of(rows[1])["pass"] is False
    # Each text once, though both cells are graded at once (the first reply is the value).
    sent = sorted(str(r.body["input"]) for r in fake.requests_to("/embeddings"))
    assert sent == ["['Echo: one']", "['Echo: two']"]
    again = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "b")], env)
    assert again.returncode == 0
    assert len(fake.requests_to("/embeddings")) == 2
    nocache = ["eval", "run", str(suite), "-o", str(tmp_path / "c"), "--no-cache"]
    assert (await fmbot(nocache, env)).returncode == 0
    assert len(fake.requests_to("/embeddings")) > 2


async def test_an_embedder_failure_is_an_error_of_the_assertion(
    tmp_path: Path, fake: FakeOpenAI, openai_env: dict[str, str]
) -> None:
    suite = write_suite(
        tmp_path, "  - message: one\n    assert: [{type: similar, value: 'echo: one'}]\n"
    )
    # The first request (the value's vector) fails; the reply's is then not asked for.
    fake.inject(Fault("status", status=400, message="bad input"), path="/embeddings")
    env = openai_env | {"FMBOT_EMBED_MODEL": "openai:embed-test"}
    result = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "a")], env)
    assert result.returncode == 1, result.stdout + result.stderr
    [row] = pq.read_table(tmp_path / "a" / "results.parquet").to_pylist()
    graded = similar_of(row)
    assert graded["pass"] is False and graded["error"] is True
    assert str(graded["reason"]).startswith("the embedder failed:")
    assert len(fake.requests_to("/embeddings")) == 1
    # Failures are not cached: a later run asks again and passes (the reply is the value).
    again = await fmbot(["eval", "run", str(suite), "-o", str(tmp_path / "b")], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(fake.requests_to("/embeddings")) == 2


async def test_suite_errors_name_their_place(tmp_path: Path, env: dict[str, str]) -> None:
    suite = write_suite(
        tmp_path,
        "  - message: hi\n"
        "    assert:\n"
        "      - {type: similar, value: hello, threshold: 1.5}\n"
        "      - {type: similar}\n"
        "      - {type: contains, value: hi, threshold: 0.5}\n",
    )
    result = await fmbot(["eval", "check", str(suite)], env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{suite}:7:50: cases.0.assert.0.threshold: Input should be less")
    assert lines[1].startswith(f"{suite}:8:9: cases.0.assert.1.value: similar needs a text value")
    assert lines[2].startswith(
        f"{suite}:9:9: cases.0.assert.2: threshold applies to llm-rubric and similar, not to "
        "contains"
    )
    assert lines[3].startswith("3 problem(s)")

    good = write_suite(tmp_path, "  - message: hi\n    assert: [{type: similar, value: hello}]\n")
    bad_embedder = await fmbot(["eval", "check", str(good)], env | {"FMBOT_EMBED_MODEL": "x:y"})
    assert bad_embedder.returncode == 2 and "Traceback" not in bad_embedder.stderr
    assert "FMBOT_EMBED_MODEL='x:y' is not valid" in bad_embedder.stderr


async def test_the_judge_directly_with_e5(tmp_path: Path) -> None:
    embedder = CachedEmbedder(LocalE5Embedder(), tmp_path / "cache")
    judge = SimilarJudge(embedder)
    try:
        same = await judge(Assertion(type="similar", value=WARRANTY), WARRANTY)
        empty = await judge(Assertion(type="similar", value=WARRANTY), " ")
    finally:
        await embedder.aclose()
    assert same.passed and same.score == pytest.approx(1.0, abs=1e-3)
    assert not empty.passed and empty.reason == "an empty reply"
    assert cosine([1.0, 0.0], [0.0, 1.0]) == 0.0 and cosine([0.0], [0.0]) == 0.0
