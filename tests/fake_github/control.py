"""The `/_fake/*` JSON control API used to steer a running fake from outside."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any
from urllib.parse import parse_qsl

from .endpoint import Reply, json_reply
from .faults import FaultRule
from .state import FakeState

CONTROL_PREFIX = "/_fake/"


class ControlError(Exception):
    """A control request that cannot be honoured; answered with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json_payload(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError as error:
        raise ControlError(400, f"body is not JSON: {error}") from None


def _reset(state: FakeState, payload: Any, query: str) -> Any:
    state.reset()
    return {"ok": True}


def _stats(state: FakeState, payload: Any, query: str) -> Any:
    return state.stats.snapshot()


def _get_config(state: FakeState, payload: Any, query: str) -> Any:
    return state.config()


def _set_config(state: FakeState, payload: Any, query: str) -> Any:
    if not isinstance(payload, dict):
        raise ControlError(400, "config must be a JSON object")
    state.apply_config(payload)
    return state.config()


def _get_faults(state: FakeState, payload: Any, query: str) -> Any:
    return state.faults.snapshot()


def _add_faults(state: FakeState, payload: Any, query: str) -> Any:
    raw_rules = [payload] if isinstance(payload, dict) else payload
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        raise ControlError(400, "faults must be a JSON list of objects")
    # Validate every rule before adding any, so a bad list changes nothing.
    rules = [FaultRule.from_mapping(raw) for raw in raw_rules]
    for rule in rules:
        state.faults.add(rule)
    return state.faults.snapshot()


def _clear_faults(state: FakeState, payload: Any, query: str) -> Any:
    state.faults.clear()
    return []


def _expected(state: FakeState, payload: Any, query: str) -> Any:
    params = dict(parse_qsl(query))
    if "since" not in params:
        raise ControlError(400, "expected needs ?since=YYYY-MM-DD")
    return state.expected_items(
        date.fromisoformat(params["since"]),
        pages=int(params.get("pages", "5")),
        per_page=int(params.get("per_page", "100")),
    )


ROUTES: dict[tuple[str, str], Callable[[FakeState, Any, str], Any]] = {
    ("POST", "reset"): _reset,
    ("GET", "stats"): _stats,
    ("GET", "config"): _get_config,
    ("POST", "config"): _set_config,
    ("GET", "faults"): _get_faults,
    ("POST", "faults"): _add_faults,
    ("DELETE", "faults"): _clear_faults,
    ("GET", "expected"): _expected,
}


def answer_control(state: FakeState, method: str, path: str, query: str, body: bytes) -> Reply:
    """Answer a request under `/_fake/`."""
    name = path.removeprefix(CONTROL_PREFIX).strip("/")
    route = ROUTES.get((method, name))
    try:
        if route is None:
            known = any(route_name == name for _, route_name in ROUTES)
            raise ControlError(405 if known else 404, f"no control route {method} {path}")
        return json_reply(200, route(state, _json_payload(body), query))
    except ControlError as error:
        return json_reply(error.status, {"message": str(error)})
    except (ValueError, TypeError) as error:
        return json_reply(400, {"message": str(error)})
