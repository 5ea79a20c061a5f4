"""The operator page's files over HTTP, and the jobs list's search (`q`) that the page uses.
What the page does in a browser is tested in tests/page."""

from __future__ import annotations

import httpx
import pytest

from service.web.page_api import CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html; charset=utf-8", b'<script type="module" src="/page/page.js">'),
        ("/page/page.js", "text/javascript; charset=utf-8", b"sessionStorage"),
        ("/page/page.css", "text/css; charset=utf-8", b"grid-template-columns"),
    ],
)
async def test_the_page_and_its_files_need_no_token(
    locked: httpx.AsyncClient, path: str, content_type: str, marker: bytes
) -> None:
    response = await locked.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert marker in response.content
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    again = await locked.get(path, headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    # the page's data does need the token
    assert (await locked.get("/v1/jobs")).status_code == 401


async def test_the_page_holds_no_inline_script_and_no_outside_resource(
    locked: httpx.AsyncClient,
) -> None:
    html = (await locked.get("/")).text
    assert "<script>" not in html and " on" + "click=" not in html
    for text in (html, (await locked.get("/page/page.css")).text):
        assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text


@pytest.mark.parametrize(
    "path", ["/page/nope.js", "/page/index.html", "/page/..%2Fpage_api.py", "/page/"]
)
async def test_only_the_pages_own_files_are_served(locked: httpx.AsyncClient, path: str) -> None:
    response = await locked.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_the_job_list_search_is_bounded(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/jobs", params={"q": "x" * 200})).status_code == 200
    for q in ("x" * 201, "a\x00b", "line\nbreak"):
        response = await http.get("/v1/jobs", params={"q": q})
        assert response.status_code == 422, q
        assert response.json()["error"]["details"][0]["loc"] == ["query", "q"]


async def test_the_search_finds_a_job_by_id_or_metadata(http: httpx.AsyncClient) -> None:
    body = {"provider": "krea", "model": "bfl/flux-1-dev", "input": {"prompt": "p"}}
    a = (await http.post("/v1/jobs", json={**body, "metadata": {"order": "A-17"}})).json()["id"]
    b = (await http.post("/v1/jobs", json=body)).json()["id"]
    for q, found in (("a-17", [a]), (b, [b]), ("", [b, a]), ("100%", [])):
        page = (await http.get("/v1/jobs", params={"q": q})).json()
        assert [job["id"] for job in page["jobs"]] == found, q


async def test_openapi_documents_the_search(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    [q] = [p for p in document["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "q"]
    assert q["in"] == "query" and q["schema"]["type"] == "string"
    assert q["schema"]["maxLength"] == 200 and "x00-\\x1f" in q["schema"]["pattern"]
