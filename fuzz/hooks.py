"""schemathesis hooks of the fuzz run (fuzz/schemathesis.toml names this file)."""

import os

import schemathesis

REVOKE_PATH = "/api/v1/api-keys/{id}/revoke"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """Never revoke the key the fuzzer authenticates with: every later request would answer 401.

    The stateful phase finds that key's id in GET /api-keys and follows it to the revoke
    operation; such a call revokes id 0 instead, which is no key (404).
    """
    if case.operation.path == REVOKE_PATH and str(case.path_parameters.get("id")) == os.environ["FUZZ_API_KEY_ID"]:
        case.path_parameters["id"] = 0
