"""API tokens on a real Redis: stored as hashes only, and revoked for every replica at once."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from hotrepos_cli.__main__ import main
from shared.api_tokens import RedisApiTokens, TokenNameTaken, token_digest


def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_a_token_is_stored_as_its_hash_and_a_revoked_one_is_known_as_revoked(redis_url: str) -> None:
    tokens = RedisApiTokens(client(redis_url))
    name = f"t-{uuid.uuid4().hex[:8]}"
    token = tokens.create(name, admin=True)
    assert token.startswith("hr_") and len(token) > 40

    stored = client(redis_url).hgetall("hotrepos:auth:tokens")
    assert token_digest(token).encode() in stored
    assert not any(token.encode() in key or token.encode() in value for key, value in stored.items())
    found = tokens.lookup(token)
    assert found is not None and (found.name, found.admin, found.revoked) == (name, True, False)
    assert name in [t.name for t in tokens.live()]
    with pytest.raises(TokenNameTaken):
        tokens.create(name, admin=False)

    # Another replica's store, with nothing cached anywhere: the revocation holds at once.
    assert RedisApiTokens(client(redis_url)).revoke(name)
    again = tokens.lookup(token)
    assert again is not None and again.revoked
    assert name not in [t.name for t in tokens.live()]
    assert not tokens.revoke(name)
    assert tokens.lookup(tokens.create(name, admin=False)) is not None  # the name is free again
    assert tokens.lookup("hr_never-made") is None


def test_the_command_line_prints_a_token_once_alone_on_the_last_line(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    assert main(["tokens", "create", name]) == 0
    token = capsys.readouterr().out.splitlines()[-1]
    assert token.startswith("hr_") and " " not in token
    found = RedisApiTokens(client(redis_url)).lookup(token)
    assert found is not None and (found.name, found.admin) == (name, False)

    assert main(["tokens", "create", f"{name}-admin", "--admin", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert set(made) == {"name", "token", "admin"} and (made["name"], made["admin"]) == (f"{name}-admin", True)

    assert main(["tokens", "create", name]) == 2  # a live token has that name
    assert "exists" in capsys.readouterr().err
    assert main(["tokens", "create", "no spaces"]) == 2

    assert main(["tokens", "list"]) == 0
    listed = capsys.readouterr().out
    assert name in listed and f"{name}-admin\tadmin" in listed and token not in listed

    assert main(["tokens", "revoke", name]) == 0
    assert RedisApiTokens(client(redis_url)).lookup(token).revoked  # type: ignore[union-attr]
    assert main(["tokens", "revoke", name]) == 1
