"""Specification of endpoint classification and instance host patterns."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aurora_smartdriver.endpoints import (
    DOMAIN_SUFFIXES,
    EndpointKind,
    InstanceHostPattern,
    RdsHost,
    classify,
    derive_pattern,
    parse_rds_host,
)

K = EndpointKind
moderate = settings(max_examples=100, deadline=None)

CLASSIFIED = [
    # commercial regions
    ("orders.cluster-c1a2b3c4d5e6.us-east-1.rds.amazonaws.com", K.RDS_CLUSTER),
    ("orders.cluster-ro-c1a2b3c4d5e6.us-east-1.rds.amazonaws.com", K.RDS_READER),
    ("reports.cluster-custom-c1a2b3c4d5e6.eu-west-2.rds.amazonaws.com", K.RDS_CUSTOM),
    ("orders-instance-1.c1a2b3c4d5e6.us-east-1.rds.amazonaws.com", K.RDS_INSTANCE),
    ("database-1.c1a2b3c4d5e6.ap-southeast-2.rds.amazonaws.com", K.RDS_INSTANCE),
    ("my-proxy.proxy-ab0cd1efghij.us-east-2.rds.amazonaws.com", K.RDS_PROXY),
    ("read-only.endpoint.proxy-ab0cd1efghij.us-east-2.rds.amazonaws.com", K.RDS_PROXY),
    ("orders.global-0a1b2c3d4e.global.rds.amazonaws.com", K.RDS_GLOBAL_WRITER),
    # multi-AZ DB cluster (non-Aurora) uses the same shapes
    ("mazc.cluster-123456789012.me-central-1.rds.amazonaws.com", K.RDS_CLUSTER),
    # GovCloud
    ("orders.cluster-c1a2b3c4d5e6.us-gov-west-1.rds.amazonaws.com", K.RDS_CLUSTER),
    ("orders.cluster-ro-c1a2b3c4d5e6.us-gov-east-1.rds.amazonaws.com", K.RDS_READER),
    ("orders-1.c1a2b3c4d5e6.us-gov-west-1.rds.amazonaws.com", K.RDS_INSTANCE),
    # China, current form (region after "rds")
    ("orders.cluster-c1a2b3c4d5e6.rds.cn-north-1.amazonaws.com.cn", K.RDS_CLUSTER),
    ("orders.cluster-ro-c1a2b3c4d5e6.rds.cn-northwest-1.amazonaws.com.cn", K.RDS_READER),
    ("alias.cluster-custom-c1a2b3c4d5e6.rds.cn-north-1.amazonaws.com.cn", K.RDS_CUSTOM),
    ("orders-2.c1a2b3c4d5e6.rds.cn-northwest-1.amazonaws.com.cn", K.RDS_INSTANCE),
    ("px.proxy-c1a2b3c4d5e6.rds.cn-north-1.amazonaws.com.cn", K.RDS_PROXY),
    # China, older form (region before "rds")
    ("orders.cluster-c1a2b3c4d5e6.cn-north-1.rds.amazonaws.com.cn", K.RDS_CLUSTER),
    ("orders-2.c1a2b3c4d5e6.cn-north-1.rds.amazonaws.com.cn", K.RDS_INSTANCE),
    # ISO partitions
    ("orders.cluster-c1a2b3c4d5e6.us-iso-east-1.rds.c2s.ic.gov", K.RDS_CLUSTER),
    ("orders.cluster-ro-c1a2b3c4d5e6.rds.us-iso-east-1.c2s.ic.gov", K.RDS_READER),
    ("orders-1.c1a2b3c4d5e6.us-isob-east-1.rds.sc2s.sgov.gov", K.RDS_INSTANCE),
    # the lab
    ("lab.cluster-c0ffee12ab34.lab.aurora.test", K.RDS_CLUSTER),
    ("lab.cluster-ro-c0ffee12ab34.lab.aurora.test", K.RDS_READER),
    ("lab-instance-1.c0ffee12ab34.lab.aurora.test", K.RDS_INSTANCE),
    # case and trailing dot do not matter
    ("Orders.CLUSTER-C1A2B3C4D5E6.US-EAST-1.RDS.AMAZONAWS.COM", K.RDS_CLUSTER),
    ("orders.cluster-ro-c1a2b3c4d5e6.us-east-1.rds.amazonaws.com.", K.RDS_READER),
    ("lab-instance-1.c0ffee12ab34.lab.aurora.test.", K.RDS_INSTANCE),
    # IP addresses
    ("10.0.12.34", K.IP_ADDRESS),
    ("127.0.0.11", K.IP_ADDRESS),
    ("::1", K.IP_ADDRESS),
    ("[::1]", K.IP_ADDRESS),
    ("2001:db8::5", K.IP_ADDRESS),
    ("fe80::1%eth0", K.IP_ADDRESS),
    # everything else
    ("localhost", K.OTHER),
    ("db.internal.example.com", K.OTHER),
    ("orders.cluster-c1a2b3c4d5e6.us-east-1.rds.amazonaws.org", K.OTHER),
    ("rds.amazonaws.com", K.OTHER),
    ("c1a2b3c4d5e6.us-east-1.rds.amazonaws.com", K.OTHER),
    ("a.b.c1a2b3c4d5e6.us-east-1.rds.amazonaws.com", K.OTHER),
    ("x.endpoint.cluster-c1a2b3c4d5e6.us-east-1.rds.amazonaws.com", K.OTHER),
    ("orders.shardgrp-c1a2b3c4d5e6.us-east-1.rds.amazonaws.com", K.OTHER),
    ("orders.cluster-.us-east-1.rds.amazonaws.com", K.OTHER),
    ("my-lb-123.elb.us-east-1.amazonaws.com", K.OTHER),
    ("orders.cluster-c0ffee12ab34.lab.aurora.example", K.OTHER),
    ("", K.OTHER),
    ("300.1.2.3", K.OTHER),
]


@pytest.mark.parametrize(("host", "kind"), CLASSIFIED, ids=[h or "<empty>" for h, _ in CLASSIFIED])
def test_classify_recognises_each_kind_in_every_partition(host: str, kind: EndpointKind) -> None:
    assert classify(host) is kind


@pytest.mark.parametrize(
    ("host", "parts"),
    [
        (
            "orders.cluster-ro-abc123.us-east-1.rds.amazonaws.com",
            RdsHost("orders", K.RDS_READER, "abc123", "us-east-1", "us-east-1.rds.amazonaws.com"),
        ),
        (
            "Orders.Cluster-ABC123.rds.cn-north-1.amazonaws.com.cn.",
            RdsHost(
                "orders", K.RDS_CLUSTER, "abc123", "cn-north-1", "rds.cn-north-1.amazonaws.com.cn"
            ),
        ),
        (
            "lab-instance-2.c0ffee12ab34.lab.aurora.test",
            RdsHost("lab-instance-2", K.RDS_INSTANCE, "c0ffee12ab34", "lab", "lab.aurora.test"),
        ),
        (
            "orders.global-xyz.global.rds.amazonaws.com",
            RdsHost("orders", K.RDS_GLOBAL_WRITER, "xyz", "global", "global.rds.amazonaws.com"),
        ),
        ("db.example.com", None),
    ],
)
def test_parse_rds_host_gives_the_name_parts(host: str, parts: RdsHost | None) -> None:
    assert parse_rds_host(host) == parts


def test_the_lab_domain_is_an_accepted_suffix() -> None:
    assert "{region}.aurora.test" in DOMAIN_SUFFIXES


@pytest.mark.parametrize(
    ("cluster_host", "pattern"),
    [
        (
            "orders.cluster-abc123.us-east-1.rds.amazonaws.com",
            "?.abc123.us-east-1.rds.amazonaws.com",
        ),
        (
            "orders.cluster-ro-abc123.us-east-1.rds.amazonaws.com",
            "?.abc123.us-east-1.rds.amazonaws.com",
        ),
        (
            "x.cluster-custom-abc123.eu-west-1.rds.amazonaws.com",
            "?.abc123.eu-west-1.rds.amazonaws.com",
        ),
        (
            "orders-1.abc123.us-gov-west-1.rds.amazonaws.com",
            "?.abc123.us-gov-west-1.rds.amazonaws.com",
        ),
        (
            "orders.cluster-abc123.rds.cn-north-1.amazonaws.com.cn",
            "?.abc123.rds.cn-north-1.amazonaws.com.cn",
        ),
        (
            "orders.cluster-abc123.cn-north-1.rds.amazonaws.com.cn",
            "?.abc123.cn-north-1.rds.amazonaws.com.cn",
        ),
        ("LAB.CLUSTER-C0FFEE12AB34.LAB.AURORA.TEST.", "?.c0ffee12ab34.lab.aurora.test"),
        ("lab.cluster-ro-c0ffee12ab34.lab.aurora.test", "?.c0ffee12ab34.lab.aurora.test"),
    ],
)
def test_derive_pattern_from_cluster_reader_custom_and_instance_names(
    cluster_host: str, pattern: str
) -> None:
    derived = derive_pattern(cluster_host)
    assert derived == InstanceHostPattern(pattern)
    assert derived.port is None


@pytest.mark.parametrize(
    "host",
    [
        "10.1.2.3",
        "::1",
        "p.proxy-abc123.us-east-1.rds.amazonaws.com",
        "orders.global-abc123.global.rds.amazonaws.com",
        "db.example.com",
        "localhost",
    ],
)
def test_derive_pattern_gives_none_where_no_instance_names_follow(host: str) -> None:
    assert derive_pattern(host) is None


def test_the_lab_cluster_pattern_names_lab_instances() -> None:
    pattern = derive_pattern("lab.cluster-c0ffee12ab34.lab.aurora.test")
    assert pattern is not None
    assert pattern.host_for("lab-instance-1") == "lab-instance-1.c0ffee12ab34.lab.aurora.test"


@pytest.mark.parametrize(
    ("text", "template", "port"),
    [
        ("?.abc123.us-east-1.rds.amazonaws.com", "?.abc123.us-east-1.rds.amazonaws.com", None),
        ("?.abc123.us-east-1.rds.amazonaws.com:5432", "?.abc123.us-east-1.rds.amazonaws.com", 5432),
        (" ?.Internal.Example.COM.:3306 ", "?.internal.example.com", 3306),
        ("db-?.svc.local", "db-?.svc.local", None),
        ("?", "?", None),
        ("replica_?.compose:1", "replica_?.compose", 1),
    ],
)
def test_parse_reads_template_and_port(text: str, template: str, port: int | None) -> None:
    pattern = InstanceHostPattern.parse(text)
    assert pattern.template == template
    assert pattern.port == port


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("db.example.com", "exactly one '?'"),
        ("?.?.example.com", "exactly one '?'"),
        ("", "exactly one '?'"),
        ("?.example.com:", "port must be a number"),
        ("?.example.com:54x", "port must be a number"),
        ("?.example.com:0", "port must be 1-65535"),
        ("?.example.com:65536", "port must be 1-65535"),
        ("?..example.com", "not a host name"),
        ("? .example.com", "not a host name"),
        ("?.exa mple.com", "not a host name"),
        ("?.cluster-abc123.us-east-1.rds.amazonaws.com", "rds-cluster endpoint names"),
        ("?.cluster-ro-abc123.us-east-1.rds.amazonaws.com", "rds-reader endpoint names"),
        ("?.proxy-abc123.us-east-1.rds.amazonaws.com", "rds-proxy endpoint names"),
    ],
)
def test_a_malformed_pattern_is_a_clear_value_error(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="instance host pattern") as info:
        InstanceHostPattern.parse(text)
    assert complaint in str(info.value)


@pytest.mark.parametrize("instance_id", ["", "a.b", "a b", "a?", "x" * 64])
def test_host_for_refuses_an_id_that_is_not_a_label(instance_id: str) -> None:
    pattern = InstanceHostPattern("?.abc123.us-east-1.rds.amazonaws.com")
    with pytest.raises(ValueError, match="instance id"):
        pattern.host_for(instance_id)


def test_a_pattern_prints_as_it_parses() -> None:
    assert str(InstanceHostPattern.parse("?.a.example.com:6432")) == "?.a.example.com:6432"
    assert str(InstanceHostPattern("?.a.example.com")) == "?.a.example.com"


# --- properties -------------------------------------------------------------------------------

labels = st.from_regex(r"[a-z][a-z0-9]{0,10}(-[a-z0-9]{1,8}){0,2}", fullmatch=True)
resource_ids = st.from_regex(r"[a-z0-9]{6,12}", fullmatch=True)
regions = st.from_regex(
    r"(us|eu|ap|cn|me|sa)(-gov)?-(east|west|north|south|central)-[1-9]", fullmatch=True
)
cluster_prefixes = st.sampled_from(["cluster-", "cluster-ro-", "cluster-custom-"])


@st.composite
def rds_domains(draw: st.DrawFn) -> tuple[str, str]:
    """A region and a domain in one of the accepted forms."""
    region = draw(st.just("lab") | regions)
    suffix = draw(st.sampled_from(DOMAIN_SUFFIXES))
    return region, suffix.format(region=region)


def randomly_cased(text: str, upper: list[bool]) -> str:
    return (
        "".join(c.upper() if u else c for c, u in zip(text, upper, strict=False))
        + text[len(upper) :]
    )


@moderate
@given(labels, cluster_prefixes, resource_ids, rds_domains(), labels)
def test_an_instance_name_from_a_derived_pattern_belongs_to_the_same_cluster(
    name: str,
    prefix: str,
    resource_id: str,
    region_and_domain: tuple[str, str],
    instance_id: str,
) -> None:
    region, domain = region_and_domain
    cluster_host = f"{name}.{prefix}{resource_id}.{domain}"
    pattern = derive_pattern(cluster_host)
    assert pattern is not None
    instance_host = pattern.host_for(instance_id)
    parsed = parse_rds_host(instance_host)
    assert parsed is not None
    assert parsed.kind is K.RDS_INSTANCE
    assert parsed.name == instance_id
    assert parsed.resource_id == resource_id
    assert parsed.region == region


@moderate
@given(st.data(), labels, cluster_prefixes, resource_ids, rds_domains())
def test_classification_ignores_case_and_a_trailing_dot(
    data: st.DataObject,
    name: str,
    prefix: str,
    resource_id: str,
    region_and_domain: tuple[str, str],
) -> None:
    host = f"{name}.{prefix}{resource_id}.{region_and_domain[1]}"
    upper = data.draw(st.lists(st.booleans(), min_size=len(host), max_size=len(host)))
    variant = randomly_cased(host, upper) + data.draw(st.sampled_from(["", "."]))
    assert classify(variant) is classify(host)
    assert derive_pattern(variant) == derive_pattern(host)


@moderate
@given(resource_ids, rds_domains(), labels, st.none() | st.integers(1, 65535))
def test_pattern_host_for_classifies_as_an_instance(
    resource_id: str, region_and_domain: tuple[str, str], instance_id: str, port: int | None
) -> None:
    text = f"?.{resource_id}.{region_and_domain[1]}" + (f":{port}" if port is not None else "")
    pattern = InstanceHostPattern.parse(text)
    assert pattern.port == port
    assert classify(pattern.host_for(instance_id)) is K.RDS_INSTANCE
    assert InstanceHostPattern.parse(str(pattern)) == pattern


@moderate
@given(st.ip_addresses())
def test_every_ip_address_is_classified_as_one(address: object) -> None:
    assert classify(str(address)) is K.IP_ADDRESS
    assert derive_pattern(str(address)) is None
