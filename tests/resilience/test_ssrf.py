"""The SSRF guard's address rules and allow-list, without any network."""

from __future__ import annotations

import ipaddress

import pytest

from fanflow.resilience import ssrf
from fanflow.resilience.ssrf import AddressGuard, AllowList, SsrfRefused, refusal


@pytest.mark.parametrize(
    "address, category",
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "special"),
        ("198.18.0.1", "special"),
        ("192.0.2.1", "special"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fe80::1", "link_local"),
        ("ff02::1", "multicast"),
        ("fec0::1", "private"),
        ("2001:db8::1", "special"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link_local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b:1::1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "link_local"),  # 6to4 of 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo client 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "special"),  # Teredo, public client
    ],
)
def test_non_public_addresses_are_refused(address: str, category: str) -> None:
    verdict = refusal(ipaddress.ip_address(address))
    assert verdict is not None and verdict[0] == category


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_embedded_addresses_are_named() -> None:
    verdict = refusal(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert verdict == ("loopback", "a loopback address (IPv4-mapped 127.0.0.1)")
    verdict = refusal(ipaddress.ip_address("169.254.169.254"))
    assert verdict == ("link_local", "a link-local address (the cloud metadata service)")


def test_allow_list_entries() -> None:
    allowed = AllowList.parse(
        [" 10.0.0.0/8", "192.168.1.7", "[fd00::1]", "Internal.Example.", "*.corp.test", ""]
    )
    ip = ipaddress.ip_address
    assert allowed.admits_address(ip("10.9.8.7"))
    assert allowed.admits_address(ip("::ffff:10.9.8.7"))
    assert allowed.admits_address(ip("192.168.1.7"))
    assert not allowed.admits_address(ip("192.168.1.8"))
    assert allowed.admits_address(ip("fd00::1"))
    assert allowed.admits_host("internal.example")
    assert allowed.admits_host("corp.test") and allowed.admits_host("a.b.corp.test")
    assert not allowed.admits_host("evilcorp.test")
    assert not allowed.admits_host("other.example")


async def test_the_guard_resolves_and_checks_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"two.test": ["93.184.216.34", "10.0.0.7"], "one.test": ["93.184.216.34"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr(ssrf, "resolve_host", resolve)
    guard = AddressGuard()
    assert await guard.addresses("ONE.test.", 443) == ["93.184.216.34"]
    with pytest.raises(SsrfRefused, match=r"two\.test resolves to 10\.0\.0\.7, which is a private"):
        await guard.addresses("two.test", 443)
    assert await AddressGuard(allow_list=["10.0.0.0/24"]).addresses("two.test", 443) == [
        "93.184.216.34",
        "10.0.0.7",
    ]
    assert await AddressGuard(allow_list=["*.test"]).addresses("two.test", 443) == [
        "93.184.216.34",
        "10.0.0.7",
    ]
    assert await guard.addresses("[2606:4700:4700::1111]", 443) == ["2606:4700:4700::1111"]


async def test_localhost_really_resolves_to_loopback() -> None:
    with pytest.raises(SsrfRefused, match=r"localhost resolves to .* loopback"):
        await AddressGuard().addresses("localhost", 80)
