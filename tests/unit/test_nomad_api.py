"""caravan.nomad_api's pure parts: which answers are transient, the backoff, the retry loop."""

from __future__ import annotations

import logging
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from caravan.errors import BackendRejected, BackendUnavailable
from caravan.nomad_api import TRANSIENT_500_TEXTS, backoff_delay, is_transient, retry


@given(st.sampled_from(TRANSIENT_500_TEXTS), st.text(max_size=40), st.text(max_size=40))
@example("No cluster leader", "", "")
@example("rpc error", "", ": stream closed")
@example("EOF", "rpc error: ", "")
def test_a_500_naming_a_leader_or_forwarding_error_is_transient(marker, before, after):
    text = f"{before} {marker.upper() if len(before) % 2 else marker} {after}"
    assert is_transient(500, text)


@given(st.integers(min_value=400, max_value=499).filter(lambda s: s != 429), st.text(max_size=60))
@example(400, "No cluster leader")
@example(404, "job not found")
def test_a_4xx_is_never_transient_whatever_its_text(status, text):
    assert not is_transient(status, text)


@pytest.mark.parametrize("text", ["parameterized job not found", "Dispatch did not provide required meta keys: [x]",
                                  "Enforcing job modify index 3: job exists with conflicting job modify index: 4",
                                  "reofs", "leaderless"])
def test_a_500_that_refuses_the_request_is_not_transient(text):
    assert not is_transient(500, text)


@pytest.mark.parametrize("status", [None, 429, 502, 503, 504])
def test_no_answer_overload_and_gateway_errors_are_transient(status):
    assert is_transient(status, "")


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0.001, max_value=2),
       st.floats(min_value=0.01, max_value=60), st.floats(min_value=0, max_value=1, exclude_max=True))
def test_backoff_is_positive_capped_and_jittered_within_half_its_ceiling(attempt, base, cap, r):
    delay = backoff_delay(attempt, base_s=base, cap_s=cap, rand=lambda: r)
    ceiling = min(cap, base * 2 ** min(attempt, 60))
    assert ceiling / 2 <= delay <= ceiling <= cap
    assert delay > 0


@given(st.integers(min_value=0, max_value=50))
def test_the_backoff_ceiling_never_shrinks(attempt):
    assert backoff_delay(attempt, rand=lambda: 1.0) <= backoff_delay(attempt + 1, rand=lambda: 1.0)


def test_retry_waits_out_an_outage_and_logs_it_once(caplog):
    answers = [BackendUnavailable("No cluster leader")] * 5 + ["ok"]
    slept = []

    def call():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with caplog.at_level(logging.WARNING, logger="caravan.nomad"):
        assert retry("GET x", call, deadline=time.monotonic() + 60, sleep=slept.append) == "ok"
    assert len(slept) == 5 and all(s > 0 for s in slept)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1, messages
    assert sum("answered again" in m for m in messages) == 1, messages


def test_retry_gives_up_at_the_deadline_with_the_last_error():
    def call():
        raise BackendUnavailable("No cluster leader")

    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match="No cluster leader"):
        retry("GET x", call, deadline=start + 0.3, base_s=0.01, cap_s=0.05)
    assert time.monotonic() - start < 5


def test_retry_passes_a_rejection_at_once():
    calls = []

    def call():
        calls.append(1)
        raise BackendRejected("HTTP 400: bad")

    with pytest.raises(BackendRejected):
        retry("GET x", call, deadline=time.monotonic() + 60, sleep=lambda s: None)
    assert len(calls) == 1


# -- translation at the edge, against a stand-in that answers what each test sets ------------------------

@pytest.fixture
def stand_in():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            status, headers, body = answers.get(self.path.split("?")[0], (404, {}, b"not found"))
            self.send_response(status)
            for name, value in {"Content-Type": "text/plain", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_DELETE = do_GET  # noqa: N815

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers, seen
    server.shutdown()
    server.server_close()


def test_answers_are_translated_once_naming_method_and_url(stand_in):
    from caravan.nomad_api import NomadAPI, NomadRejected, NomadUnavailable

    address, answers, _ = stand_in
    api = NomadAPI(address, timeout_s=2)
    answers["/v1/job/a"] = (500, {}, b"No cluster leader")
    with pytest.raises(NomadUnavailable, match=r"GET .*/v1/job/a: HTTP 500: No cluster leader"):
        api.get("job/a")
    answers["/v1/job/a"] = (500, {}, b"parameterized job not found")
    with pytest.raises(NomadRejected, match=r"GET .*/v1/job/a: HTTP 500: parameterized") as info:
        api.get("job/a")
    assert info.value.status == 500
    assert api.read("job/missing") is None
    answers["/v1/job/a"] = (429, {}, b"")
    with pytest.raises(NomadUnavailable):
        api.get("job/a")


def test_no_answer_is_unavailable():
    from caravan.nomad_api import NomadAPI, NomadUnavailable

    from ..servers import free_port

    with pytest.raises(NomadUnavailable, match="no answer"):
        NomadAPI(f"http://127.0.0.1:{free_port()}", timeout_s=1).get("jobs")


def test_a_blocking_query_sends_index_and_wait_and_resets_an_index_that_went_back(stand_in):
    from caravan.nomad_api import NomadAPI

    address, answers, seen = stand_in
    api = NomadAPI(address, namespace="team", timeout_s=2)
    answers["/v1/job/a"] = (200, {"X-Nomad-Index": "7", "Content-Type": "application/json"}, b'{"Status": "dead"}')
    body, index = api.block("job/a", index=3, wait_s=5)
    assert body == {"Status": "dead"} and index == 7
    assert "index=3" in seen[-1] and "wait=5s" in seen[-1] and "namespace=team" in seen[-1]
    assert api.block("job/a", index=9, wait_s=5)[1] == 0


def test_logs_are_decoded_as_utf8_with_replacement(stand_in):
    from caravan.nomad_api import NomadAPI

    address, answers, _ = stand_in
    answers["/v1/client/fs/logs/abc"] = (200, {}, "héllo ✓\n".encode() + b"\xff")
    assert NomadAPI(address, timeout_s=2).logs("abc", "t", "stderr") == "héllo ✓\n\ufffd"
