"""Who a request came from, for the log: the peer's address, or behind trusted proxies the
address they say they forwarded for.

A load balancer or reverse proxy connects from its own address and names the player's in
`X-Forwarded-For`, each proxy on the way appending the address it was connected from. Anyone
can send that header, so it is believed only from a peer in `[http] trusted_proxies`, and only
as far as the trust goes: the list is walked from the right (the hop nearest this node), and
the client is the first address that is not a trusted proxy, as nginx's real_ip module does
with `real_ip_recursive on`. What an untrusted client wrote to the left of that is never
read. An entry that is not an address (`unknown`, garbage) ends the walk at the last address
reached.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddresses:
    """The trusted proxies now in force; `trust` takes new ones on a reload."""

    def __init__(self, proxies: Iterable[Network] = ()) -> None:
        self._proxies: tuple[Network, ...] = tuple(proxies)

    def trust(self, proxies: Iterable[Network]) -> None:
        self._proxies = tuple(proxies)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address of a request from `peer` carrying this X-Forwarded-For (all
        of its fields, joined with commas)."""
        if not self._proxies or not forwarded_for or not self._trusted(_address(peer)):
            return peer  # with no proxies configured, nothing but this test per request
        client = peer
        for entry in reversed(forwarded_for.split(",")):
            address = _address(entry)
            if address is None:
                break
            client = str(address)
            if not self._trusted(address):
                break
        return client

    def _trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self._proxies)


def _address(text: str) -> Address | None:
    """An IP address as X-Forwarded-For entries and peers write it (an IPv6 one in brackets,
    either with a port, IPv4 in IPv6's mapped form as IPv4), else None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4:PORT (an IPv6 address has two colons or more)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
