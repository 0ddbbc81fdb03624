"""The parts of the OpenAPI contract FastAPI cannot infer from the routes: the problem+json
body of every error, the bearer scheme, and the errors that middleware and handlers send on
any operation (authentication, limits at the edge, database outages, malformed bodies).

Applied once to the generated document (``service.main``), so routes stay free of
boilerplate and ``openapi.yaml`` lists every status and media type the app can send.
"""

from __future__ import annotations

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

PROBLEM_SCHEMA = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details: a stable `type` and a `detail` that says how to fix the request.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri", "examples": ["https://shears.dev/problems/invalid-spec"]},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}

# status -> (when, headers); added to operations that can send them.
_COMMON_V1 = {
    "401": ("Missing or unknown API key (`WWW-Authenticate: Bearer`).", {}),
    "429": (
        "Over the request rate of this API key, or too many uploads at once; retry after `Retry-After`.",
        RETRY_AFTER,
    ),
    "503": (
        "The database (or, for uploads and jobs, the queue or temporary disk) is unavailable for a moment.",
        RETRY_AFTER,
    ),
}
_WITH_BODY = {
    "400": ("The body could not be read: malformed multipart, or the client stopped sending.", {}),
    "408": ("The body stopped arriving for `SHEARS_BODY_TIMEOUT_S` (or was shorter than its Content-Length).", {}),
    "413": ("The body is over the size limit.", {}),
    "415": ("The body's media type is not one this operation accepts.", {}),
}


def _problem_response(description: str, headers: dict | None = None) -> dict:
    response: dict = {"description": description, "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}
    if headers:
        response["headers"] = headers
    return response


def _depends_on(dependant, call) -> bool:
    return any(dep.call is call or _depends_on(dep, call) for dep in dependant.dependencies)


def authenticated_operations(routes, tenant_dependency) -> set[tuple[str, str]]:
    """``(path, method)`` of every route that needs an API key (depends on ``tenant_dependency``)."""
    return {
        (route.path, method.lower())
        for route in routes
        if getattr(route, "dependant", None) is not None and _depends_on(route.dependant, tenant_dependency)
        for method in route.methods
    }


def complete_contract(spec: dict, authenticated: set[tuple[str, str]]) -> dict:
    """Add the problem schema and the app-wide error answers to ``spec`` (in place);
    ``authenticated`` names the operations that need a key (401, rate limit, bearer scheme)."""
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    bearer = {"type": "http", "scheme": "bearer", "description": "An API key (`shears hash-key` for the operator)."}
    components["securitySchemes"] = {"bearer": bearer}
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status, response in list(responses.items()):
                content = response.get("content") or {}
                if status.startswith(("4", "5")) and status != "503" or PROBLEM_JSON in content:
                    if path == "/readyz":
                        continue  # its 503 is the readiness body
                    responses[status] = _problem_response(
                        response.get("description") or "Error", response.get("headers")
                    )
            if "422" in responses and responses["422"]["description"] == "Validation Error":
                responses["422"]["description"] = "A parameter or the body is invalid; `errors` names each field."
            if (path, method) not in authenticated:
                continue
            operation["security"] = [{"bearer": []}]
            extra = dict(_COMMON_V1)
            if "requestBody" in operation:
                extra.update(_WITH_BODY)
            for status, (description, headers) in extra.items():
                responses.setdefault(status, _problem_response(description, headers))
                if headers:
                    responses[status].setdefault("headers", headers)
            operation["responses"] = dict(sorted(responses.items()))
    return spec
