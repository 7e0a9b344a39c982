"""Strict request bodies for the REST API: the same rules as for OCPP frames (``limits.py``).

FastAPI parses bodies with ``json.loads``, which takes ``NaN``, ``Infinity``, ``1e400`` (as
infinity), integers of any size and lone surrogates; pydantic then lets most of them through
to fields typed ``dict[str, Any]`` or ``str`` (a charging profile, a token id) and its error
answer, echoing such an input, cannot even be encoded. This dependency reads the body first
and refuses those with a 422 naming the field, before any route sees it. Path and query
parameters get the one check that concerns them: no U+0000 (PostgreSQL text cannot hold it,
so a look-up with one would be a 500 there and a plain miss on SQLite).
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from ocpp_server.limits import InvalidInput, NotJson, check_tree, parse_json


async def strict_json_body(request: Request) -> None:
    """422 for a JSON body holding a value we could not store or send (``limits.py``), or a
    path or query parameter with U+0000."""
    for where, params in (("path", request.path_params.items()),
                          ("query", request.query_params.multi_items())):
        for key, text in params:
            if "\x00" in str(key) or "\x00" in str(text):
                raise HTTPException(422, f"{where} parameter {str(key)!r}: contains U+0000")
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    body = await request.body()  # cached by Starlette: the route reads the same bytes
    if not body:
        return
    try:
        value = parse_json(body)
    except NotJson as exc:
        reason = exc.reason if exc.reason.startswith("payload") else f"body: {exc.reason}"
        raise HTTPException(422, reason.replace("payload", "body", 1)) from None
    try:
        check_tree(value, root="body")
    except InvalidInput as exc:
        raise HTTPException(422, str(exc)) from None
