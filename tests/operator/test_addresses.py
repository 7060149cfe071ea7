"""Pod addresses: pod IPs by default, the --pod-addresses file's overrides where given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tandem.operator.addresses import (
    AddressBook,
    AddressFileError,
    PodAddress,
    default_address,
    parse_overrides,
)


def pod(name: str, ip: str | None = "10.1.2.3") -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns"}, "status": {"podIP": ip} if ip else {}}


def test_defaults_are_the_pod_ip_and_the_operators_ports() -> None:
    assert default_address(pod("w"), router=False) == PodAddress(
        "10.1.2.3:50051", "http://10.1.2.3:9090/metrics"
    )
    assert default_address(pod("r"), router=True) == PodAddress(
        None, "http://10.1.2.3:8000/metrics"
    )
    assert default_address(pod("w", "fd00::1"), False).grpc == "[fd00::1]:50051"
    assert default_address(pod("w", None), False) == PodAddress(None, None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1]", "an object keyed by"),
        ('{"w": {}}', "<namespace>/<pod>"),
        ('{"ns/w": {"grpc": "nohost"}}', "ns/w.grpc must be HOST:PORT"),
        ('{"ns/w": {"metrics": "ftp://x"}}', "ns/w.metrics must be an http"),
        ('{"ns/w": {"port": 1}}', "unknown keys"),
        ("{", "not JSON"),
    ],
)
def test_bad_files_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(AddressFileError, match=problem):
        parse_overrides(text)


def test_book_reads_the_file_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    book = AddressBook(path)
    assert book.of(pod("w")).grpc == "10.1.2.3:50051"  # no file yet: pod IPs
    path.write_text(json.dumps({"ns/w": {"grpc": "127.0.0.1:7001"}}))
    assert book.of(pod("w")) == PodAddress("127.0.0.1:7001", None)
    assert book.of(pod("other")).grpc == "10.1.2.3:50051"
    path.write_text(json.dumps({"ns/w": {"grpc": "127.0.0.1:7002"}}))
    os.utime(path, ns=(1, 2))  # a new stamp, even within the clock's resolution
    assert book.of(pod("w")).grpc == "127.0.0.1:7002"
