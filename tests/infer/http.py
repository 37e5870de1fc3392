"""Plain HTTP calls for the tests the `openai` client cannot make (admin routes, broken bodies)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class Reply:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.text = body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.text)

    def raise_for_status(self) -> "Reply":
        if self.status_code >= 400:
            raise AssertionError(f"HTTP {self.status_code}: {self.text}")
        return self


def request(method: str, url: str, json_body=None, content: bytes | None = None, headers: dict | None = None) -> Reply:
    data = content if content is not None else (json.dumps(json_body).encode() if json_body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return Reply(resp.status, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.read())


def post(url: str, json=None, content: bytes | None = None, headers: dict | None = None) -> Reply:
    return request("POST", url, json, content, headers)


def get(url: str, headers: dict | None = None) -> Reply:
    return request("GET", url, headers=headers)


def delete(url: str) -> Reply:
    return request("DELETE", url)
