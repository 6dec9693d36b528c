"""A check loaded into the schemathesis run of tests/app/test_openapi.py (SCHEMATHESIS_HOOKS): a
request valid by the schema may be refused only for what a schema cannot say. Anything else (an
empty list, a label over its length) means the schema promised more than the server keeps."""

from __future__ import annotations

import schemathesis

BEYOND_A_SCHEMA = {
    415: {"unsupported_image"},  # "the bytes of a decodable image"
    422: {"unknown_label", "duplicate_label"},  # "words the vocabulary knows", "unique ignoring case"
}


@schemathesis.check
def valid_requests_are_refused_only_for_what_a_schema_cannot_say(ctx, response, case):
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code < 400:
        return None
    try:
        code = response.json().get("error")
    except ValueError:  # not the error JSON
        code = None
    if code not in BEYOND_A_SCHEMA.get(response.status_code, set()):
        raise AssertionError(f"a request valid by the schema was refused: {response.status_code} {code}")
    return None
