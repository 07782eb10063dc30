from __future__ import annotations

import json

import pytest

from otakit.content import parse_content
from otakit.errors import ValidationError
from tests.samples import LEGACY

SHA = "c733d0d6fc33e8a34533d8358ee706c2b6c67be5beeaad6fab3c98dfb66537a7"


def _content(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"package": "app", "version": "1.0.0", "branch": "major", "sha256": SHA}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_legacy_content_json_is_accepted_as_it_is() -> None:
    raw = (LEGACY / "test.json").read_bytes()
    content = parse_content(raw)
    assert content.package == "test"
    assert content.local == "./test"
    assert content.remote == "http://localhost:3000/"
    assert content.model_extra == {"restore": ""}
    assert str(content.requirements["test"]) == "==0.0.1"  # a bare version means exactly it
    assert content.raw == json.loads(raw)  # every value kept, unknown keys included
    assert list(content.raw) == list(json.loads(raw))  # and in the uploaded order


def test_defaults_for_absent_seed_keys() -> None:
    content = parse_content(_content())
    assert content.description == content.update_info == content.before_update == ""
    assert content.dependencies == {}
    assert content.raw == _content()  # defaults are not written into what is stored


def test_dependency_list_means_any_version() -> None:
    content = parse_content(_content(dependencies=["base", "libfoo"]))
    assert {name: str(spec) for name, spec in content.requirements.items()} == {"base": "", "libfoo": ""}


def test_sha256_compares_case_insensitively() -> None:
    content = parse_content(_content(sha256=SHA.upper()))
    assert content.sha256_matches(SHA)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"package": None}, "package is required"),
        ({"version": None}, "version is required"),
        ({"branch": None}, "branch is required"),
        ({"sha256": None}, "sha256 is required"),
        ({"package": "../etc"}, "invalid package"),
        ({"package": "a/b"}, "invalid package"),
        ({"package": ".."}, "invalid package"),
        ({"package": "a\x00b"}, "invalid package"),
        ({"package": "x" * 101}, "invalid package"),
        ({"branch": "beta/../../x"}, "invalid branch"),
        ({"version": "1.0/../../x"}, "invalid version"),
        ({"version": "not-a-version"}, "invalid version"),
        ({"sha256": "abc"}, "sha256"),
        ({"sha256": "g" * 64}, "sha256"),
        ({"dependencies": {"../x": "1.0"}}, "dependency name"),
        ({"dependencies": {"x": "=>1"}}, "version requirement"),
        ({"description": 5}, "description"),
    ],
)
def test_invalid_content_is_refused_with_a_clear_error(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_content(_content(**changes))


@pytest.mark.parametrize("text", [b"{", b"[]", b"null", b"\xff\xfe", b""])
def test_broken_json_is_refused(text: bytes) -> None:
    with pytest.raises(ValidationError, match=r"content\.json"):
        parse_content(text)


def test_file_name_follows_the_seed_layout() -> None:
    assert parse_content(_content(version="0.1.0")).file_name == "app-major-0.1.0.zip"
