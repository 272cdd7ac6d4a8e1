"""One parse of an address (cluster/address.py), without Ray: only forms that urllib, urllib3 (requests) and yarl
(aiohttp) read alike are accepted, what they read in the rebuilt address is the parsed host and port, and `run`
refuses an address that would carry the cluster token across a network in clear text before anything connects.
No test sends anything to a non-loopback address."""

import argparse
import re
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import urllib3
import yarl

from cluster import address, local
from cluster.address import AddressError, parse
from rlhf_ray import cli

ATTACK = "http://10.1.2.3:8265\\@127.0.0.1:8265"  # urlsplit: 127.0.0.1; urllib3 (requests): 10.1.2.3
JOB_API = ("http", "https")


def job_api(text: str) -> address.Address:
    return parse(text, "--address", JOB_API, "http", "the job API's address")


def test_the_parsers_disagree_on_the_attack_and_it_is_refused_with_one_message():
    assert urlsplit(ATTACK).hostname == "127.0.0.1" and urllib3.util.parse_url(ATTACK).host == "10.1.2.3"
    with pytest.raises(AddressError) as e:
        job_api(ATTACK)
    assert str(e.value) == (f"--address {ATTACK}: a user name or password ('@'), which parsers read differently; "
                            "expected SCHEME://HOST[:PORT] with HOST an IP address or a host name (letters, digits, "
                            "'.', '-')")


@pytest.mark.parametrize("text, problem", [
    ("http://user:pw@127.0.0.1:8265", "a user name or password ('@')"),
    ("http://10.1.2.3:8265\\.127.0.0.1:8265", "a backslash"),
    ("http://%31%32%37.0.0.1:8265", "a percent-escape"),
    ("http://[fe80::1%25eth0]:8265", "a percent-escape"),
    ("http://127.0.0.1:8265 ", "whitespace or a control character"),
    ("http://127.0.0.1:8265\n", "whitespace or a control character"),
    ("http://127.0.0.1\t:8265", "whitespace or a control character"),
    ("http://127.0.0.1:8265/x", "a path"),
    ("http://127.0.0.1:8265?x=1", "a query or fragment"),
    ("http://127.0.0.1:8265#x", "a query or fragment"),
    ("http://127.0.0.1:", "a port that is not a number"),
    ("http://127.0.0.1:8265abc", "a port that is not a number"),
    ("http://127.0.0.1:99999", "port 99999 is not in [1, 65535]"),
    ("http://127.0.0.1:0", "port 0 is not in [1, 65535]"),
    ("http://127.1:8265", "ends in a number"),
    ("http://0x7f.1:8265", "ends in a number"),
    ("http://2130706433:8265", "ends in a number"),
    ("http://010.0.0.1:8265", "is not an IPv4 address"),
    ("http://[1::2::3]:8265", "is not an IPv6 address"),
    ("http://a..b:8265", "is not a host name"),
    ("http://-a.example:8265", "is not a host name"),
    ("http://" + "a" * 400, "more than an address has"),
    ("ray://127.0.0.1:10001", "the job API's address"),
    ("file://127.0.0.1", "the job API's address"),
])
def test_tricky_forms_are_refused_naming_the_problem(text, problem):
    with pytest.raises(AddressError) as e:
        job_api(text)
    assert str(e.value).startswith(f"--address ") and problem in str(e.value), e.value
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, url", [
    ("http://127.0.0.1:8265", "http://127.0.0.1:8265"),
    ("127.0.0.1:8265", "http://127.0.0.1:8265"),
    ("HTTP://LocalHost:8265/", "http://localhost:8265"),
    ("https://Head.Example:8265", "https://head.example:8265"),
    ("http://127.0.0.1.evil:8265", "http://127.0.0.1.evil:8265"),  # a host name like any other: not loopback
    ("http://[::1]:8265", "http://[::1]:8265"),
    ("http://[0:0:0:0:0:0:0:1]:8265", "http://[::1]:8265"),
    ("http://[2001:db8::1]", "http://[2001:db8::1]"),
])
def test_every_parser_reads_the_rebuilt_address_as_parsed(text, url):
    a = job_api(text)
    assert a.url == url
    split, u3, y = urlsplit(a.url), urllib3.util.parse_url(a.url), yarl.URL(a.url)
    assert split.hostname == u3.host.strip("[]") == y.host == a.host
    assert split.port == u3.port == y.explicit_port == a.port


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("127.8.0.3", True), ("::1", True),
                                         ("localhost", True), ("::ffff:127.0.0.1", True), ("127.0.0.1.evil", False),
                                         ("10.1.2.3", False), ("2001:db8::1", False), ("head.example", False)])
def test_what_counts_as_this_machine(host, local):
    assert address.Address("http", host, 8265).is_local() is local


def test_an_address_of_this_machine_is_local(monkeypatch):
    """A Ray job's driver is given its own node's IP (RAY_ADDRESS): traffic to it never leaves the machine. (The
    tests run where only loopback exists: the interfaces are psutil's answer on a node, MAC and zone included.)"""
    import psutil

    nic = [SimpleNamespace(address=a) for a in ("192.0.2.7", "fe80::1%eth0", "02:fc:00:00:00:01")]
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {"eth0": nic})
    assert address.Address("", "192.0.2.7", 6379).is_local()
    assert address.Address("", "fe80::1", 6379).is_local()
    assert not address.Address("", "192.0.2.8", 6379).is_local()


# ---------------------------------------------------------------- `run`: ray.init's address


@pytest.fixture
def token_on(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    for key in ("RAY_USE_TLS", "RAY_ADDRESS", address.INSECURE_ENV):
        monkeypatch.delenv(key, raising=False)
    address._warned.clear()


@pytest.mark.parametrize("given", ["10.1.2.3:6379", "ray://10.1.2.3:10001", "head.example:6379",
                                   "127.0.0.1.evil:6379", "[2001:db8::1]:6379"])
def test_run_refuses_the_token_in_clear_to_another_host(given, token_on):
    with pytest.raises(AddressError) as e:
        address.for_ray(given, "--address")
    assert str(e.value).startswith("--address ") and "carries the cluster token" in str(e.value), e.value
    assert "--insecure-http" in str(e.value) and "RAY_USE_TLS=1" in str(e.value)


@pytest.mark.parametrize("given, rebuilt", [("127.0.0.1:6379", "127.0.0.1:6379"), ("LOCALHOST:6379", "localhost:6379"),
                                            ("ray://127.0.0.1:10001", "ray://127.0.0.1:10001"),
                                            ("[::1]:6379", "[::1]:6379")])
def test_run_takes_this_machine_rebuilt(given, rebuilt, token_on):
    assert address.for_ray(given, "--address") == rebuilt


@pytest.mark.parametrize("given, problem", [
    ("http://127.0.0.1:8265", "`run` joins a cluster (auto, HOST:6379, ray://HOST:10001)"),
    ("127.0.0.1", "no port"),
    ("ray://127.0.0.1", "no port"),
    ("anyscale://x:1", "`run` joins a cluster"),  # Ray would import a module of that name
    ("ray://u@127.0.0.1:10001", "a user name or password"),
])
def test_run_refuses_what_is_not_a_cluster_address(given, problem, token_on):
    with pytest.raises(AddressError, match=re.escape(problem)):
        address.for_ray(given, "--address")


def test_tls_or_no_token_or_the_flag_let_it_through(token_on, monkeypatch, capsys):
    monkeypatch.setenv("RAY_USE_TLS", "1")
    assert address.for_ray("10.1.2.3:6379", "--address") == "10.1.2.3:6379"
    monkeypatch.delenv("RAY_USE_TLS")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # nothing secret travels (the warning after connecting says more)
    assert address.for_ray("10.1.2.3:6379", "--address") == "10.1.2.3:6379"
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    for _ in range(2):  # checked before the run and again when it connects: warned once
        assert address.for_ray("ray://10.1.2.3:10001", "--address", insecure_http=True) == "ray://10.1.2.3:10001"
    err = capsys.readouterr().err
    assert err.startswith("warning: --address ray://10.1.2.3:10001: Ray's protocol") and err.count("\n") == 1, err


def test_auto_is_checked_as_the_cluster_ray_finds(token_on, monkeypatch):
    """`auto` on a worker node finds the head's address in Ray's cluster file; with a token there, Ray turns
    token auth on by itself (RAY_AUTH_MODE unset)."""
    import ray._private.services
    from ray._raylet import AuthenticationTokenLoader

    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setattr(ray._private.services, "canonicalize_bootstrap_address", lambda addr, temp_dir=None: "10.1.2.3:6379")
    monkeypatch.setattr(AuthenticationTokenLoader, "instance", lambda: type("L", (), {"has_token": lambda self, **k: True})())
    with pytest.raises(AddressError, match=r"--address auto \(found 10.1.2.3:6379\) 10.1.2.3:6379: Ray's protocol"):
        address.for_ray("auto", "--address")
    monkeypatch.setattr(ray._private.services, "canonicalize_bootstrap_address", lambda addr, temp_dir=None: "127.0.0.1:6379")
    assert address.for_ray("auto", "--address") == "auto"


def _refused_run(capsys, monkeypatch, tmp_path, *argv) -> str:
    """`rlhf-ray run` exits 1 with one `error:` line, and nothing connected or was written."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    run_dir = tmp_path / "run"
    assert cli.main(["run", "configs/tiny/sft.yaml", *argv, "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not run_dir.exists()
    return err


@pytest.mark.parametrize("argv, where", [(["--address", "10.1.2.3:6379"], "--address 10.1.2.3:6379"),
                                         (["--address", "ray://10.1.2.3:10001"], "--address ray://10.1.2.3:10001"),
                                         (["cluster.address=10.1.2.3:6379"], "cluster.address 10.1.2.3:6379")])
def test_run_refuses_before_anything_connects(argv, where, token_on, capsys, monkeypatch, tmp_path):
    err = _refused_run(capsys, monkeypatch, tmp_path, *argv)
    assert err.startswith(f"error: {where}: Ray's protocol to another host without TLS"), err


def test_run_takes_ray_address_as_ray_would(token_on, capsys, monkeypatch, tmp_path):
    """RAY_ADDRESS is what Ray joins when the address is unset or `auto`: it is the one checked."""
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    for argv in ([], ["--address", "auto"]):
        assert _refused_run(capsys, monkeypatch, tmp_path, *argv).startswith("error: RAY_ADDRESS 10.1.2.3:6379: ")
    args = argparse.Namespace(address="127.0.0.1:6379", insecure_http=False)
    assert cli._cluster_address(args, cli._load(argparse.Namespace(config="configs/tiny/sft.yaml", overrides=[]))) \
        == "127.0.0.1:6379"  # an explicit address wins over RAY_ADDRESS, in Ray too


def test_run_refuses_the_attack_form(token_on, capsys, monkeypatch, tmp_path):
    err = _refused_run(capsys, monkeypatch, tmp_path, "--address", "10.1.2.3:6379\\@127.0.0.1:6379")
    assert "a user name or password ('@')" in err


def test_a_cluster_without_token_auth_is_named_in_a_warning(monkeypatch, capsys):
    """After connecting: a driver without a token got in, so the cluster asks for none."""
    from ray._private.authentication import authentication_utils

    address._warned.clear()
    monkeypatch.setattr(authentication_utils, "is_token_auth_enabled", lambda: False)
    local._warn_without_token("the Ray cluster at 127.0.0.1:6379")
    err = capsys.readouterr().err
    assert err == ("warning: the Ray cluster at 127.0.0.1:6379 runs without token authentication (RAY_AUTH_MODE is "
                   "not token): anyone who can reach its ports can run code on it as the user running Ray\n")
    monkeypatch.setattr(authentication_utils, "is_token_auth_enabled", lambda: True)
    local._warn_without_token("the embedded cluster")
    assert capsys.readouterr().err == ""
