"""Schemathesis hooks for scripts/hostile.sh (SCHEMATHESIS_HOOKS=this file).

Schemathesis learns token ids from the answers (GET /v1/tokens lists the caller too;
every token's `created_by` names it) and then rotates, renews, edits and deletes them —
its own credential included: one `POST /v1/tokens/<own id>/rotate` and every later
request answers 401, so most of the run would test nothing. So no request reaches the
caller's own token (KEYGATE_OWN_ID):

- a DELETE aimed at it deletes a throwaway token made for it instead;
- any other request aimed at it goes to a stand-in token (initially KEYGATE_OTHER_ID,
  same permissions), which therefore has to stay: when schemathesis deletes the
  stand-in by its own id (it is listed too), a new stand-in is made.

Before these last two rules, a delete aimed at the caller's token removed the
stand-in, and every later request for the caller's token answered 404 — which
schemathesis reported as ST302 "created resource not found" when it had taken the id
from a new token's `created_by` (docs/hostile.md). New tokens are made with
KEYGATE_ADMIN_URL and the caller's key, KEYGATE_ADMIN_KEY.
"""
import json
import os
import urllib.request

import schemathesis

OWN = os.environ["KEYGATE_OWN_ID"]
STAND_IN = {"id": os.environ["KEYGATE_OTHER_ID"]}
REDIRECTED = set()


def new_token(name):
    req = urllib.request.Request(
        os.environ["KEYGATE_ADMIN_URL"] + "/v1/tokens",
        data=json.dumps({"name": name, "permissions": ["all"]}).encode(),
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
        if case.method.upper() == "DELETE":
            params["id"] = new_token("schemathesis throwaway")
        else:
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
        STAND_IN["id"] = new_token("schemathesis stand-in")
