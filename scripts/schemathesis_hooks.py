"""Schemathesis hooks for scripts/hostile.sh (SCHEMATHESIS_HOOKS=this file).

Schemathesis learns token ids from the answers (GET /v1/tokens lists the caller too)
and then rotates, renews, edits and deletes them — its own credential included: one
`POST /v1/tokens/<own id>/rotate` and every later request answers 401, so most of the
run would test nothing. Every request aimed at the caller's own token
(KEYGATE_OWN_ID) is sent to a stand-in token (initially KEYGATE_OTHER_ID, same
permissions) instead; nothing else is changed.

The stand-in is listed too, so schemathesis may delete it by its own id; from then on
every request it sends for its own token would answer 404, as if that token were gone
(its checks then blame the server, e.g. "created resource not found"). So when the
stand-in is deleted by its own id, a new one is made (KEYGATE_ADMIN_URL with the
caller's key, KEYGATE_ADMIN_KEY). A delete aimed at the caller's own token is not
undone: to schemathesis that token is then gone, and its requests answer 404.
"""
import json
import os
import urllib.request

import schemathesis

OWN = os.environ["KEYGATE_OWN_ID"]
STAND_IN = {"id": os.environ["KEYGATE_OTHER_ID"]}
REDIRECTED = set()


def new_stand_in():
    req = urllib.request.Request(
        os.environ["KEYGATE_ADMIN_URL"] + "/v1/tokens",
        data=json.dumps({"name": "schemathesis stand-in", "permissions": ["all"]}).encode(),
        headers={
            "Authorization": "ApiKey " + os.environ["KEYGATE_ADMIN_KEY"],
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["id"]


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if params and params.get("id") == OWN:
        params["id"] = STAND_IN["id"]
        REDIRECTED.add(case.id)


@schemathesis.hook
def after_call(context, case, response):
    params = case.path_parameters or {}
    if (
        case.method.upper() == "DELETE"
        and params.get("id") == STAND_IN["id"]
        and case.id not in REDIRECTED
        and 200 <= response.status_code < 300
    ):
        STAND_IN["id"] = new_stand_in()
