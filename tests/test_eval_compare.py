"""``fmbot eval compare``: cells aligned, flips both ways, rate changes, escaped HTML."""

from __future__ import annotations

from pathlib import Path

from tests.eval_helpers import env, fmbot

__all__ = ["env"]


def write_suite(tmp_path: Path, wanted: str) -> Path:
    (tmp_path / "t.yaml").write_text("name: t\ninstruction: Be brief.\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "templates: [t.yaml]\nmodels: ['echo:']\nthreshold: 0\n"
        "cases:\n"
        "  - message: '<script>alert(1)</script> mug'\n"
        "  - message: plain socks\n"
        f"assert: [{{type: contains, value: '{wanted}'}}]\n"
    )
    return suite


async def test_compare_shows_flips_and_rate_changes(tmp_path: Path, env: dict[str, str]) -> None:
    suite = write_suite(tmp_path, "mug")
    a, b = tmp_path / "a", tmp_path / "b"
    assert (await fmbot(["eval", "run", str(suite), "-o", str(a)], env)).returncode == 0
    write_suite(tmp_path, "socks")
    assert (await fmbot(["eval", "run", str(suite), "-o", str(b)], env)).returncode == 0

    page = tmp_path / "cmp.html"
    result = await fmbot(["eval", "compare", str(a), str(b), "--html", str(page)], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "pass → fail: 1; fail → pass: 1"
    assert lines[1] == "t.yaml × echo:: 50% → 50% (+0 points)"
    assert lines[2].startswith("pass → fail: case 0 (<script>alert(1)</script> mug) × t.yaml")
    assert "contains: 'socks' not found" in lines[3]
    assert lines[4].startswith("fail → pass: case 1 (plain socks)")
    assert "contains: 'mug' not found" in lines[5]

    html = page.read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; mug" in html
    assert html.count('<tr class="changed">') == 2


async def test_compare_needs_two_eval_runs(tmp_path: Path, env: dict[str, str]) -> None:
    result = await fmbot(["eval", "compare", str(tmp_path), str(tmp_path)], env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "give the --output of an `fmbot eval run`" in result.stderr
