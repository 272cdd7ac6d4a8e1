"""The job commands' addresses and answers, without Ray: plain http to a host that is not loopback is refused
before any connection (the token would travel in clear) unless --insecure-http / RLHF_RAY_INSECURE_HTTP=1, which
warn in one line; an address that parsers read differently is refused; the real client (requests, and aiohttp for
`logs --follow`) reaches the address that was checked, rebuilt from its parts, whatever RAY_ADDRESS says; and what
a real HTTP server on 127.0.0.1 answers (401, 403, 404, nothing) is one `error:` line with exit 1, not a
traceback. No test sends anything to a non-loopback address: the refusal comes first, and where it lets the call
through, the job client is a stand-in or the server is on 127.0.0.x."""

import http.server
import json
import socket
import threading

import pytest

from rlhf_ray import cli
from rlhf_ray.runtime import jobs

FAR = "http://10.255.255.1:8265"  # never contacted: refused before connecting, or handed to the stand-in client


class StandIn:
    """Records the address it was made for; stop_job answers 'already ended'."""

    made: list = []

    def __init__(self, address):
        StandIn.made.append(address)

    def get_address(self):
        return StandIn.made[-1]

    def stop_job(self, job_id):
        return False


@pytest.fixture
def stand_in(monkeypatch):
    import ray.job_submission

    StandIn.made = []
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", StandIn)
    monkeypatch.delenv(jobs.INSECURE_ENV, raising=False)
    return StandIn.made


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv", [["status", "raysubmit_1"], ["logs", "raysubmit_1"], ["stop", "raysubmit_1"],
                                  ["submit", "configs/tiny/ppo.yaml"]])
def test_plain_http_off_this_machine_is_refused_before_any_connection(argv, stand_in, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret-token-value")
    assert cli.main([*argv, "--address", FAR]) == 1
    err = _one_line_error(capsys)
    assert f"--address {FAR}: plain http to another host would carry the cluster token (RAY_AUTH_MODE=token, " \
           f"from RAY_AUTH_TOKEN)" in err and "--insecure-http" in err and "https://" in err, err
    assert "s3cret" not in err and stand_in == []  # no client made: nothing connected


def test_the_refusal_says_when_no_token_would_travel(stand_in, capsys, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.255.255.1:8265")  # no scheme: Ray's client would use http
    assert cli.main(["status", "raysubmit_1"]) == 1
    err = _one_line_error(capsys)
    assert "RAY_ADDRESS http://10.255.255.1:8265: plain http" in err and "no token is configured here" in err
    assert stand_in == []


def test_insecure_http_goes_on_with_one_warning(stand_in, capsys, monkeypatch):
    assert cli.main(["stop", "raysubmit_1", "--address", FAR, "--insecure-http"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith(f"warning: --address {FAR}: plain http") and err.count("\n") == 1, err
    assert out == "raysubmit_1: already ended\n" and stand_in == [FAR]
    monkeypatch.setenv(jobs.INSECURE_ENV, "1")
    assert cli.main(["stop", "raysubmit_1", "--address", FAR]) == 0
    assert capsys.readouterr().err.startswith("warning: ") and stand_in == [FAR, FAR]


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://127.8.0.3:8265", "http://[::1]:8265",
                                     "http://localhost:8265", "https://head.example:8265", "127.0.0.1:8265"])
def test_loopback_and_https_need_no_flag(address, stand_in, capsys):
    assert cli.main(["stop", "raysubmit_1", "--address", address]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("address", ["ray://127.0.0.1:10001", "auto"])
def test_an_address_that_is_not_the_job_api_is_one_line(address, stand_in, capsys):
    assert cli.main(["status", "raysubmit_1", "--address", address]) == 1
    assert "the job API is the dashboard's address, http(s)://HOST:8265" in _one_line_error(capsys)


class Dashboard(http.server.BaseHTTPRequestHandler):
    """A job API that answers `mode`: 401 / 403 to everything, or a version and then 404 for the job."""

    mode = "401"

    def do_GET(self):
        if self.mode in ("401", "403"):
            status, body = int(self.mode), {"401": "Unauthorized: Missing authentication token",
                                             "403": "Forbidden: Invalid authentication token"}[self.mode]
        elif self.path == "/api/version":
            status, body = 200, json.dumps({"ray_version": "2.60.0", "version": "4", "session_name": "x"})
        else:
            status, body = 404, "Job raysubmit_nope does not exist."
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET  # stop

    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode, expected", [
    ("401", "the job API asks for the cluster token (401) and none was sent: set RAY_AUTH_MODE=token"),
    ("403", "the job API refused the token (403)"),
    ("404", "the job API refused: Request failed with status code 404: Job raysubmit_nope does not exist."),
])
def test_what_a_real_job_api_answers_is_one_line(mode, expected, dashboard, capsys, monkeypatch):
    monkeypatch.setattr(Dashboard, "mode", mode)
    for argv in (["status", "raysubmit_nope"], ["logs", "raysubmit_nope"], ["stop", "raysubmit_nope"]):
        assert cli.main([*argv, "--address", dashboard]) == 1
        err = _one_line_error(capsys)
        assert err.startswith(f"error: {dashboard}: {expected}"), err


def test_no_job_api_at_the_address_is_one_line(capsys):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["status", "raysubmit_1", "--address", f"http://127.0.0.1:{port}"]) == 1
    assert f"127.0.0.1:{port}: no answer from the job API" in _one_line_error(capsys)


ATTACK = "http://10.1.2.3:8265\\@127.0.0.1:8265"  # urlsplit reads 127.0.0.1, requests connects to 10.1.2.3


@pytest.mark.parametrize("argv", [["status", "raysubmit_1"], ["logs", "raysubmit_1", "--follow"],
                                  ["stop", "raysubmit_1"], ["submit", "configs/tiny/ppo.yaml"]])
def test_an_address_parsers_read_differently_is_refused_before_any_connection(argv, stand_in, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret-token-value")
    for flags in ([], ["--insecure-http"]):  # not a question of trust: the address is not one thing
        assert cli.main([*argv, "--address", ATTACK, *flags]) == 1
        err = _one_line_error(capsys)
        assert err == (f"error: --address {ATTACK}: a user name or password ('@'), which parsers read differently; "
                       "expected SCHEME://HOST[:PORT] with HOST an IP address or a host name (letters, digits, '.', "
                       "'-')\n"), err
    assert stand_in == []


class Recorder(Dashboard):
    """The Dashboard above (a version, then 404), noting which server each request reached and its Host header."""

    mode = "404"
    seen: list = []

    def do_GET(self):
        Recorder.seen.append((self.server.server_address[0], self.path, self.headers.get("Host")))
        super().do_GET()


@pytest.fixture
def near_and_far(monkeypatch):
    """Two job APIs on loopback: 127.0.0.1 (the address given) and 127.0.0.2 (standing for another host, named
    by RAY_ADDRESS and RAY_API_SERVER_ADDRESS, which Ray's client would otherwise put in its place)."""
    Recorder.seen = []
    servers = [http.server.ThreadingHTTPServer((host, 0), Recorder) for host in ("127.0.0.1", "127.0.0.2")]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    near, far = (server.server_port for server in servers)
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.2:{far}")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.2:{far}")
    yield near
    for server in servers:
        server.shutdown()
        server.server_close()


def test_requests_reach_the_address_checked_rebuilt(near_and_far, capsys):
    assert cli.main(["status", "raysubmit_nope", "--address", f"HTTP://LocalHost:{near_and_far}/"]) == 1
    assert "Job raysubmit_nope does not exist" in _one_line_error(capsys)
    assert Recorder.seen and {(ip, host) for ip, _, host in Recorder.seen} == {("127.0.0.1",
                                                                               f"localhost:{near_and_far}")}


def test_logs_follow_streams_from_the_address_checked(near_and_far, capsys):
    """aiohttp (yarl) opens the log stream: a websocket to the rebuilt address, which this server answers 404."""
    assert cli.main(["logs", "raysubmit_nope", "--follow", "--address", f"127.0.0.1:{near_and_far}"]) == 1
    assert f"http://127.0.0.1:{near_and_far}: the job API refused: 404" in _one_line_error(capsys)
    assert ("127.0.0.1", "/api/jobs/raysubmit_nope/logs/tail", f"127.0.0.1:{near_and_far}") in Recorder.seen
    assert {ip for ip, _, _ in Recorder.seen} == {"127.0.0.1"}
