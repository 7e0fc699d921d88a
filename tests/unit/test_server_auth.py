"""Named API keys: parsing (flag, environment, file), the middleware's check, and the name it hands on."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from server.auth import ApiKeyMiddleware, api_key_name
from server.settings import ALL_OPTIONS, Settings, SettingsError, add_options, settings_from


def resolve(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_options(parser, ALL_OPTIONS)
    return settings_from(parser.parse_args(argv), env or {})


def test_named_keys_from_flag_env_and_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nalice = sk-a\n\nbob=sk-b\n")
    settings = resolve(
        ["--api-keys", "carol=sk-c, dave=sk-d", "--api-keys-file", str(keys_file)], {"LPU_API_KEY": "sk-x"}
    )
    assert settings.api_keys == {
        "sk-x": None,
        "sk-c": "carol",
        "sk-d": "dave",
        "sk-a": "alice",
        "sk-b": "bob",
    }
    assert resolve([], {"LPU_API_KEYS": "eve=sk-e"}).api_keys == {"sk-e": "eve"}
    assert resolve([]).api_keys == {}
    assert "sk-c" not in repr(settings) and "sk-a" not in repr(settings)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--api-keys", "alice"], "NAME=KEY"),
        (["--api-keys", "=sk-a"], "NAME=KEY"),
        (["--api-keys", " , "], "no NAME=KEY"),
        (["--api-keys-file", "/nonexistent/keys"], "cannot read /nonexistent/keys"),
    ],
)
def test_bad_keys_are_refused_naming_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        resolve(argv)
    assert argv[0] in str(info.value)


def test_a_name_or_key_given_twice_is_refused() -> None:
    with pytest.raises(SettingsError, match="'alice' is given twice"):
        resolve(["--api-keys", "alice=sk-1,alice=sk-2"])
    with pytest.raises(SettingsError, match="key of API key name 'bob'"):
        resolve(["--api-keys", "alice=sk-1,bob=sk-1"])


def _app(keys: dict[str, str | None]) -> TestClient:
    app = FastAPI()

    @app.get("/v1/whoami")
    async def whoami(request: Request) -> dict[str, str | None]:
        return {"name": api_key_name(request)}

    app.add_middleware(ApiKeyMiddleware, keys=keys)
    return TestClient(app)


def test_each_named_key_is_accepted_and_its_name_handed_on() -> None:
    client = _app({"sk-a": "alice", "sk-b": "bob", "sk-plain": None})
    for key, name in (("sk-a", "alice"), ("sk-b", "bob"), ("sk-plain", None)):
        response = client.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200 and response.json() == {"name": name}, key
    for header in ({"Authorization": "Bearer sk-"}, {"Authorization": "Basic sk-a"}, {}):
        response = client.get("/v1/whoami", headers=header)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_a_bad_keys_value_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as info:
        resolve(["--api-keys", "sk-secret-without-name"])
    assert "sk-secret" not in str(info.value)
