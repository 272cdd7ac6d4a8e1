"""Addresses of a Ray cluster and of its job API: one parse, its parts checked, one address rebuilt from them.

Up to four parsers read an address on its way out: urllib's `urlsplit` (which the checks used), urllib3 (requests,
the job client), yarl (aiohttp, `logs --follow`) and Ray's own split (`ray.init`). They disagree on odd input:
`http://10.1.2.3:8265\\@127.0.0.1:8265` is host 127.0.0.1 to urlsplit and 10.1.2.3 to urllib3, which sent the
cluster token there. So an address is accepted only in the form on which they all agree, `[SCHEME://]HOST[:PORT][/]`
with HOST an IP literal or a DNS name of letters, digits, dots and dashes, and every client is given the address
rebuilt from the parsed parts, never the text as typed.

What may travel to an address is decided here too: a host that is not this machine's is reached in clear text
unless TLS is on, and with Ray's token authentication the token travels with every call, so such a host needs
--insecure-http (or RLHF_RAY_INSECURE_HTTP=1), which warns in one line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from typing import Optional

INSECURE_ENV = "RLHF_RAY_INSECURE_HTTP"
MAX_CHARS = 300

_FORM = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
                   r"(?::(?P<port>[0-9]{1,5}))?/?")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NUMBER = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")  # a last label that some parsers (WHATWG, inet_aton) read as IPv4


class AddressError(ConnectionError):
    """An address refused before any connection: one `error:` line at the command line. (A ConnectionError, as
    the job API's errors are: this layer sits below rlhf_ray.errors and cannot import UserError.)"""


@dataclass(frozen=True)
class Address:
    scheme: str  # "http", "https", "ray"; "" for Ray's HOST:PORT (its GCS)
    host: str  # an IP address in its canonical form (IPv6 without brackets), or a lower-case DNS name
    port: Optional[int]

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """What every client is given: rebuilt from the parts, so all parsers read the same host and port."""
        return f"{self.scheme}://{self.netloc}" if self.scheme else self.netloc

    def is_local(self) -> bool:
        """Traffic to it stays on this machine: loopback (127.0.0.0/8, ::1, `localhost`) or an address of one of
        this machine's interfaces (a Ray job's driver is given its own node's IP). Names are not looked up."""
        if self.host == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        ip = getattr(ip, "ipv4_mapped", None) or ip
        return ip.is_loopback or ip in _own_ips()


def _own_ips() -> set:
    import psutil  # Ray's dependency

    ips = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            try:
                ips.add(ipaddress.ip_address(a.address.split("%")[0]))
            except ValueError:
                pass  # a MAC address
    return ips


def shown(text: str) -> str:
    """The address as typed, with control characters escaped (a backslash stays one backslash)."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text[:120])
    return out + ("..." if len(text) > 120 else "")


def parse(text: str, where: str, schemes: tuple[str, ...], default_scheme: str, expected: str,
          port_required: bool = False) -> Address:
    """The one parse of an address: `[SCHEME://]HOST[:PORT][/]`, each part checked, or AddressError naming `where`
    and the first problem. `schemes` are those accepted (`expected` says what is, for a wrong one); without a
    scheme the address is `default_scheme`'s."""
    m = _FORM.fullmatch(text) if len(text) <= MAX_CHARS else None
    if m is None:
        raise AddressError(f"{where} {shown(text)}: {_problem(text)}; expected SCHEME://HOST[:PORT] with HOST an IP "
                           f"address or a host name (letters, digits, '.', '-')")
    scheme = (m["scheme"] or default_scheme).lower()
    if scheme not in schemes:
        raise AddressError(f"{where} {shown(text)}: {expected}")
    host = _host(m["host"], text, where)
    if m["port"] is None and (port_required or scheme in ("", "ray")):
        raise AddressError(f"{where} {shown(text)}: no port; {expected}")
    port = None if m["port"] is None else int(m["port"])
    if port is not None and not 1 <= port <= 65535:
        raise AddressError(f"{where} {shown(text)}: port {port} is not in [1, 65535]")
    return Address(scheme, host, port)


def _problem(text: str) -> str:
    if len(text) > MAX_CHARS:
        return f"{len(text):,} characters, more than an address has ({MAX_CHARS})"
    if "@" in text:
        return "a user name or password ('@'), which parsers read differently"
    if "\\" in text:
        return "a backslash, which parsers read differently"
    if any(c.isspace() or not c.isprintable() for c in text):
        return "whitespace or a control character"
    if "%" in text:
        return "a percent-escape"
    if any(c in text for c in "?#"):
        return "a query or fragment"
    rest = text.partition("://")[2] or text
    if "/" in rest.rstrip("/"):
        return "a path"
    if re.search(r":(?![0-9]{1,5}/?$)", rest.rpartition("]")[2]):
        return "a port that is not a number"
    return "not an address"


def _host(host: str, text: str, where: str) -> str:
    """An IP address in canonical form, or a DNS name lower-cased; a name that some parser would read as a number
    (127.1, 0x7f.1, 2130706433) or with an empty or malformed label is refused."""
    bad = f"{where} {shown(text)}: host {host!r} "
    if host.startswith("["):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise AddressError(bad + "is not an IPv6 address") from None
    if re.fullmatch(r"[0-9]+(\.[0-9]+){3}", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise AddressError(bad + "is not an IPv4 address (four numbers 0-255, no leading zeros)") from None
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(bad + "is not a host name (labels of letters, digits and '-', separated by single dots)")
    if _NUMBER.fullmatch(labels[-1]):
        raise AddressError(bad + "ends in a number, which parsers read as different IPv4 addresses; write the "
                           "address as four numbers (127.0.0.1)")
    return host.lower()


# ---------------------------------------------------------------- what may travel to an address


def insecure_allowed(flag: bool) -> bool:
    return flag or os.environ.get(INSECURE_ENV) == "1"


_warned: set[str] = set()


def warn_once(line: str) -> None:
    """One `warning:` line on stderr (the same address is checked before the run and again when it connects)."""
    if line not in _warned:
        _warned.add(line)
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _tls_on() -> bool:
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")  # Ray's own test (grpc_utils)


def token_auth_on(auto: bool) -> bool:
    """Whether Ray's client will send the cluster token: RAY_AUTH_MODE=token; unset, only for `auto` (a cluster
    found on this machine), when a token exists (Ray 2.60's worker.init: an explicit address never turns it on)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None or not auto:
        return (mode or "").lower() == "token"
    from ray._raylet import AuthenticationTokenLoader

    return AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)


RUN_FORM = "`run` joins a cluster (auto, HOST:6379, ray://HOST:10001); send a run to a dashboard address with " \
           "`rlhf-ray submit`"


def for_ray(given: str, where: str, insecure_http: bool = False) -> str:
    """The address to hand `ray.init` for `given` (`auto`, HOST:PORT, ray://HOST:PORT), rebuilt from its parts;
    AddressError, before any connection, for one to another host that would carry the cluster token in clear."""
    if given == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")  # the cluster Ray will join: the cluster file, a local GCS
        target = parse(found, f"{where} auto (found {found})", ("",), "", RUN_FORM)
        _check_clear_text(target, f"{where} auto (found {found})", insecure_http, auto=True)
        return "auto"  # as given: with `auto` Ray turns token auth on by itself when a token exists
    target = parse(given, where, ("", "ray"), "", RUN_FORM)
    _check_clear_text(target, where, insecure_http, auto=False)
    return target.url


def _check_clear_text(target: Address, where: str, insecure_http: bool, auto: bool) -> None:
    if target.is_local() or _tls_on() or not token_auth_on(auto):
        return
    said = f"{where} {target.url}: Ray's protocol to another host without TLS (RAY_USE_TLS is not 1) carries the " \
           f"cluster token (token authentication is on) in clear text"
    if insecure_allowed(insecure_http):
        warn_once(f"{said} (--insecure-http / {INSECURE_ENV}=1)")
        return
    raise AddressError(f"{said}; turn on Ray's TLS (RAY_USE_TLS=1 and its certificates, here and on the cluster), "
                       f"run on the head node (--address auto), or submit the run as a job through a tunnel "
                       f"(`rlhf-ray submit --address http://127.0.0.1:8265`); on a trusted network pass "
                       f"--insecure-http (or set {INSECURE_ENV}=1)")
