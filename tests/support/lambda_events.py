"""API Gateway events for the Lambda handler, made from the real ones in tests/data/aws."""

from __future__ import annotations

import base64
import copy
import json

from bot.messenger import SIGNATURE_HEADER, sign
from tests.support.home import APP_SECRET
from tests.support.paths import TEST_DATA

HTTP_API = json.loads((TEST_DATA / "aws" / "apigw-http-v2-event.json").read_text())
REST_API = json.loads((TEST_DATA / "aws" / "apigw-rest-v1-event.json").read_text())


def http_api_post(body: bytes, secret: str = APP_SECRET, *, encode: bool = True) -> dict:
    """A webhook POST through an HTTP API (payload 2.0) signed with `secret`; `encode`: its body in base64."""
    event = copy.deepcopy(HTTP_API)
    event["routeKey"] = event["requestContext"]["routeKey"] = "POST /webhook"
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/webhook"
    event["requestContext"]["http"]["method"] = "POST"
    event["headers"].update(
        {
            "content-type": "application/json",
            "content-length": str(len(body)),
            SIGNATURE_HEADER.lower(): sign(secret, body),
            "user-agent": "facebookexternalua",
        }
    )
    event["body"] = base64.b64encode(body).decode() if encode else body.decode()
    event["isBase64Encoded"] = encode
    return event


def http_api_get(path: str) -> dict:
    """A GET of `path` through an HTTP API (payload 2.0)."""
    event = copy.deepcopy(HTTP_API)
    event["routeKey"] = event["requestContext"]["routeKey"] = f"GET {path}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = "GET"
    event["body"] = None
    return event


def rest_api_post(body: bytes, secret: str = APP_SECRET) -> dict:
    """A webhook POST through a REST API (payload 1.0), signed with `secret`."""
    event = copy.deepcopy(REST_API)
    event["httpMethod"] = event["requestContext"]["httpMethod"] = "POST"
    event["path"] = event["requestContext"]["path"] = "/webhook"
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    event["headers"] = {**event["headers"], **headers}
    event["multiValueHeaders"] = {name: [value] for name, value in event["headers"].items()}
    event["queryStringParameters"] = event["multiValueQueryStringParameters"] = None
    event["body"], event["isBase64Encoded"] = body.decode(), False
    return event


def rest_api_get(path: str, query: dict[str, str]) -> dict:
    """A GET of `path` with `query` through a REST API (payload 1.0)."""
    event = copy.deepcopy(REST_API)
    event["httpMethod"] = event["requestContext"]["httpMethod"] = "GET"
    event["path"] = path
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    event["body"] = None
    return event
