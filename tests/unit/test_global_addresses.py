"""--global-address with several global replicas (docs/ha.md): parsed, validated, refused clearly."""

from __future__ import annotations

import pytest
from zonemesh.shared.config import Config, ConfigError
from zonemesh.zone_cp.kds_client import global_addresses, parse_global_address


def zone(address: str) -> Config:
    return Config(mode="zone", zone="zone-1", global_address=address, zone_token_file="token")


def test_one_or_several_addresses_are_accepted_in_order() -> None:
    zone("grpcs://a:5685,grpcs://b:6000").validate()
    assert global_addresses("grpcs://a:5685, grpcs://b:6000") == ["grpcs://a:5685", "grpcs://b:6000"]
    assert global_addresses("grpcs://a") == ["grpcs://a"]
    assert parse_global_address("grpcs://b") == ("b", 5685)
    assert parse_global_address("grpcs://[::1]:7000") == ("::1", 7000)


@pytest.mark.parametrize("address", ["grpcs://a:5685,http://b:5685", "grpcs://a:5685,", "grpcs://a,b:5685"])
def test_an_address_that_is_not_grpcs_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="global_address must be grpcs://HOST:PORT, or several comma-separated"):
        zone(address).validate()
