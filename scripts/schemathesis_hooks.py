"""Schemathesis hooks for scripts/hostile.sh (SCHEMATHESIS_HOOKS=this file).

Schemathesis learns token ids from the answers (GET /v1/tokens lists the caller too)
and then rotates, renews, edits and deletes them — its own credential included: one
`POST /v1/tokens/<own id>/rotate` and every later request answers 401, so most of the
run would test nothing. Every request aimed at the caller's own token
(KEYGATE_OWN_ID) is sent to a stand-in token (KEYGATE_OTHER_ID, same permissions)
instead; nothing else is changed.
"""
import os

import schemathesis

OWN = os.environ["KEYGATE_OWN_ID"]
OTHER = os.environ["KEYGATE_OTHER_ID"]


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if params and params.get("id") == OWN:
        params["id"] = OTHER
