"""Specification of the settings object: defaults, value parsing, consistency and the reference."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aurora_smartdriver.dsn import parse
from aurora_smartdriver.errors import AuroraSmartDriverError, ConfigError
from aurora_smartdriver.settings import (
    DRIVER_PARAMETERS,
    PARAMETERS,
    Settings,
    parameter_reference_markdown,
)

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "parameters.md"

moderate = settings(max_examples=100, deadline=None)


def config_error(**params: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Settings.from_params(params)
    return caught.value


# --- defaults and declaration ----------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    s = Settings()
    assert s.topology_source == "auto"
    assert (s.refresh_interval, s.fast_refresh_interval, s.staleness_window) == (5.0, 0.1, 300.0)
    assert s.instance_host_pattern is None
    assert s.replica_status_schema == "information_schema"
    assert s.read_only_variable == "innodb_read_only"
    assert (s.dns_server, s.dns_timeout, s.dns_ttl_cap, s.resolve) == ((), 2.0, 5.0, True)
    assert (s.role, s.reader_strategy, s.max_replica_lag, s.reader_fallback) == (
        "writer",
        "random",
        None,
        "writer",
    )
    assert (s.pool_min_size, s.pool_max_size, s.max_concurrent_connects) == (0, 10, 4)
    assert (s.max_lifetime, s.max_lifetime_jitter, s.max_idle) == (3600.0, 0.1, 600.0)
    assert (s.connect_timeout, s.statement_timeout, s.failover_timeout) == (5.0, None, 30.0)
    assert (s.retry_reads, s.failover, s.session_init) == (False, True, ())
    assert (s.auth, s.secret_id, s.credentials_refresh_interval) == ("password", None, 60.0)


def test_every_parameter_has_a_section_and_a_one_line_description() -> None:
    for parameter in PARAMETERS.values():
        assert parameter.section, parameter.name
        assert parameter.doc.endswith("."), parameter.name
        assert "\n" not in parameter.doc, parameter.name


def test_durations_are_in_seconds_and_counts_in_connections() -> None:
    assert PARAMETERS["refresh_interval"].unit == "s"
    assert PARAMETERS["max_replica_lag"].unit == "s"
    assert PARAMETERS["pool_max_size"].unit == "connections"
    assert PARAMETERS["max_lifetime_jitter"].unit == "fraction"
    assert PARAMETERS["role"].unit == ""


def test_every_default_renders_to_text_that_parses_back_to_it() -> None:
    for parameter in PARAMETERS.values():
        text = parameter.render(parameter.default)
        assert parameter.parse(text) == parameter.default, parameter.name


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().pool_max_size = 3  # type: ignore[misc]


def test_replace_parses_and_validates_like_construction() -> None:
    s = dataclasses.replace(Settings(), refresh_interval="250ms")  # type: ignore[arg-type]
    assert s.refresh_interval == 0.25
    with pytest.raises(ConfigError, match="pool_min_size"):
        dataclasses.replace(s, pool_min_size=11)


def test_repr_shows_only_the_parameters_that_differ_from_their_defaults() -> None:
    assert repr(Settings()) == "Settings()"
    assert repr(Settings.from_params({"role": "reader", "pool_max_size": "20"})) == (
        "Settings(role='reader', pool_max_size=20)"
    )


def test_query_params_are_the_changed_parameters_as_dsn_text() -> None:
    s = Settings.from_params(
        {"refresh_interval": 2, "dns_server": "10.0.0.2", "session_init": ["SET a = 1", "SET b"]}
    )
    assert s.query_params() == {
        "refresh_interval": "2s",
        "dns_server": "10.0.0.2:53",
        "session_init": "SET a = 1;SET b",
    }
    assert Settings.from_params(s.query_params()) == s


# --- switches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["on", "true", "1", "yes", "ON", " True "])
def test_switch_words_for_on(text: str) -> None:
    assert Settings.from_params({"retry_reads": text}).retry_reads is True


@pytest.mark.parametrize("text", ["off", "false", "0", "no", "Off"])
def test_switch_words_for_off(text: str) -> None:
    assert Settings.from_params({"failover": text}).failover is False


def test_switch_accepts_python_booleans() -> None:
    assert Settings(retry_reads=True).retry_reads is True


def test_malformed_switch_names_parameter_value_and_expectation() -> None:
    error = config_error(retry_reads="maybe")
    assert str(error) == (
        "invalid value 'maybe' for parameter 'retry_reads': "
        "expected on or off (also true/false, yes/no, 1/0)"
    )
    assert (error.parameter, error.value) == ("retry_reads", "maybe")


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5), (" 3 s ", 3.0)],
)
def test_duration_units(text: str, seconds: float) -> None:
    assert Settings.from_params({"connect_timeout": text}).connect_timeout == seconds


def test_duration_accepts_numbers_and_timedeltas() -> None:
    assert Settings(connect_timeout=7).connect_timeout == 7.0
    assert Settings.from_params({"max_idle": timedelta(minutes=2)}).max_idle == 120.0


@pytest.mark.parametrize("value", ["-1", "5x", "nan", "inf", "", True, -0.5, float("inf")])
def test_malformed_duration_is_refused(value: object) -> None:
    error = config_error(connect_timeout=value)
    assert error.parameter == "connect_timeout"
    assert str(error).endswith(
        "expected a duration greater than 0 such as 250ms, 5s, 2m or a number of seconds"
    )


def test_zero_is_refused_where_a_duration_must_be_positive() -> None:
    assert "greater than 0" in str(config_error(refresh_interval="0"))


def test_zero_is_accepted_where_it_means_no_wait() -> None:
    assert Settings.from_params({"dns_ttl_cap": "0s"}).dns_ttl_cap == 0.0
    assert Settings.from_params({"validate_after_idle": 0}).validate_after_idle == 0.0


@pytest.mark.parametrize("text", ["none", "", "None"])
def test_optional_duration_can_be_unset(text: str) -> None:
    s = Settings.from_params({"max_replica_lag": text, "statement_timeout": text})
    assert (s.max_replica_lag, s.statement_timeout) == (None, None)


def test_optional_duration_says_it_can_be_unset() -> None:
    assert str(config_error(max_replica_lag="soon")).endswith("or a number of seconds, or none")


@moderate
@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_any_duration_renders_to_text_that_parses_back_exactly(seconds: float) -> None:
    parameter = PARAMETERS["dns_ttl_cap"]
    assert parameter.parse(parameter.render(seconds)) == seconds


# --- counts and fractions -------------------------------------------------------------------


def test_count_accepts_text_and_ints() -> None:
    assert Settings.from_params({"pool_max_size": "20"}).pool_max_size == 20
    assert Settings(max_concurrent_connects=2).max_concurrent_connects == 2


@pytest.mark.parametrize("value", ["2.5", "-1", "x", "1_0", True, 2.0])
def test_malformed_count_is_refused(value: object) -> None:
    error = config_error(pool_min_size=value)
    assert str(error).endswith("expected a whole number of at least 0")


def test_pool_max_size_must_be_at_least_one() -> None:
    assert str(config_error(pool_max_size="0")) == (
        "invalid value '0' for parameter 'pool_max_size': expected a whole number of at least 1"
    )


@pytest.mark.parametrize(("text", "fraction"), [("0.25", 0.25), ("10%", 0.1), ("0", 0.0)])
def test_jitter_is_a_fraction(text: str, fraction: float) -> None:
    assert Settings.from_params({"max_lifetime_jitter": text}).max_lifetime_jitter == fraction


def test_jitter_above_one_is_refused() -> None:
    assert str(config_error(max_lifetime_jitter=1.5)) == (
        "invalid value '1.5' for parameter 'max_lifetime_jitter': "
        "expected a fraction from 0 to 1, such as 0.1 or 10%"
    )


# --- choices -----------------------------------------------------------------------------------


def test_choice_is_case_insensitive() -> None:
    assert Settings.from_params({"topology_source": "Aurora-PostgreSQL"}).topology_source == (
        "aurora-postgresql"
    )


def test_misspelt_choice_lists_the_choices_and_suggests_the_closest() -> None:
    error = config_error(reader_strategy="round-robin")
    assert str(error) == (
        "invalid value 'round-robin' for parameter 'reader_strategy': expected one of random, "
        "round_robin, least_connections, least_lag, fastest_response; did you mean 'round_robin'?"
    )
    assert error.suggestion == "did you mean 'round_robin'?"


def test_read_only_variable_choices() -> None:
    assert Settings.from_params({"read_only_variable": "read_only"}).read_only_variable == (
        "read_only"
    )
    assert "one of innodb_read_only, read_only" in str(config_error(read_only_variable="ro"))


# --- lists -----------------------------------------------------------------------------------


def test_dns_servers_are_addresses_with_optional_ports() -> None:
    s = Settings.from_params({"dns_server": "127.77.5.2:53, 10.0.0.2,[::1]:5353,::2"})
    assert s.dns_server == (("127.77.5.2", 53), ("10.0.0.2", 53), ("::1", 5353), ("::2", 53))


def test_dns_servers_accept_python_pairs() -> None:
    s = Settings.from_params({"dns_server": [("10.0.0.2", 5300), "10.0.0.3"]})
    assert s.dns_server == (("10.0.0.2", 5300), ("10.0.0.3", 53))


@pytest.mark.parametrize("text", ["ns1.example.com", "10.0.0.2:0", "10.0.0.2:dns", "[::1"])
def test_dns_server_must_be_an_address(text: str) -> None:
    error = config_error(dns_server=text)
    assert str(error) == (
        f"invalid value {text!r} for parameter 'dns_server': expected nameserver addresses as "
        "ip[:port], comma separated (IPv6 as [ip]:port)"
    )


def test_session_init_statements_are_separated_by_semicolons() -> None:
    s = Settings.from_params({"session_init": "SET a = 1; SET search_path TO app ;"})
    assert s.session_init == ("SET a = 1", "SET search_path TO app")


def test_session_init_statement_given_in_python_cannot_contain_a_semicolon() -> None:
    error = config_error(session_init=["SET a = 1; SET b = 2"])
    assert "cannot itself contain ';'" in str(error)


# --- texts ------------------------------------------------------------------------------------


def test_instance_host_pattern_may_carry_a_port() -> None:
    pattern = "?.abc.lab.aurora.test:5432"
    assert Settings(instance_host_pattern=pattern).instance_host_pattern == pattern


@pytest.mark.parametrize(
    ("pattern", "count"), [("db.abc.test", 0), ("?.?.abc.test", 2), ("?-?.x:5432", 2)]
)
def test_instance_host_pattern_needs_exactly_one_question_mark(pattern: str, count: int) -> None:
    error = config_error(instance_host_pattern=pattern)
    assert str(error).startswith(f"invalid value {pattern!r} for parameter 'instance_host_pattern'")
    assert error.suggestion == f"it contains {count} '?'"


@pytest.mark.parametrize("pattern", ["?.abc test", "?.abc.test:99999", "?/x"])
def test_instance_host_pattern_must_be_a_host_name(pattern: str) -> None:
    assert "expected a host name containing exactly one '?'" in str(
        config_error(instance_host_pattern=pattern)
    )


def test_replica_status_schema_must_be_an_identifier() -> None:
    # It is written into a query, so anything but an identifier is refused.
    assert Settings(replica_status_schema="aurora_lab").replica_status_schema == "aurora_lab"
    error = config_error(replica_status_schema="x; DROP TABLE t")
    assert str(error).endswith("expected an SQL identifier (letters, digits, _, $)")


def test_region_must_look_like_an_aws_region() -> None:
    assert Settings(region="us-gov-west-1").region == "us-gov-west-1"
    assert str(config_error(region="Frankfurt")).endswith(
        "expected an AWS region name, or nothing to leave it unset"
    )


def test_long_values_are_shortened_in_messages() -> None:
    error = config_error(role="x" * 500)
    assert error.value is not None
    assert len(error.value) == 80
    assert error.value.endswith("...")


# --- consistency -------------------------------------------------------------------------------


def test_pool_min_size_cannot_exceed_pool_max_size() -> None:
    error = config_error(pool_min_size=11)
    assert str(error) == (
        "pool_min_size (11) exceeds pool_max_size (10); raise pool_max_size or lower pool_min_size"
    )
    assert error.parameter == "pool_min_size"


def test_fast_refresh_cannot_be_slower_than_normal_refresh() -> None:
    error = config_error(fast_refresh_interval="2s", refresh_interval="1s")
    assert str(error).startswith("fast_refresh_interval (2s) exceeds refresh_interval (1s)")


def test_backoff_initial_cannot_exceed_backoff_max() -> None:
    assert str(config_error(backoff_initial=3)) == ("backoff_initial (3s) exceeds backoff_max (2s)")


def test_secrets_auth_needs_a_secret_id() -> None:
    assert str(config_error(auth="secrets")) == (
        "auth=secrets needs secret_id; give the Secrets Manager secret's name or ARN as secret_id"
    )


def test_secret_id_without_secrets_auth_is_refused_rather_than_ignored() -> None:
    assert str(config_error(secret_id="prod/db")) == (
        "secret_id is only used with auth=secrets, not auth=password; "
        "add auth=secrets or remove secret_id"
    )


def test_dns_server_with_resolve_off_is_refused_rather_than_ignored() -> None:
    error = config_error(dns_server="10.0.0.2", resolve="off")
    assert str(error) == (
        "dns_server has no effect with resolve=off; remove dns_server or set resolve=on"
    )


@pytest.mark.parametrize("source", ["static", "probe"])
def test_instance_host_pattern_is_refused_where_the_dsn_lists_the_instances(source: str) -> None:
    error = config_error(topology_source=source, instance_host_pattern="?.x.test")
    assert str(error).startswith(
        f"instance_host_pattern has no effect with topology_source={source}"
    )


# --- names -----------------------------------------------------------------------------------


def test_unknown_parameter_suggests_the_close_match() -> None:
    error = config_error(pool_max_sise=3)
    assert str(error) == "unknown parameter 'pool_max_sise'; did you mean 'pool_max_size'?"
    assert error.parameter == "pool_max_sise"


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("pool_size", "pool_max_size"),  # SQLAlchemy's create_engine
        ("max_size", "pool_max_size"),  # psycopg_pool
        ("min_size", "pool_min_size"),  # psycopg_pool
        ("pool_timeout", "borrow_timeout"),  # SQLAlchemy
        ("pool_recycle", "max_lifetime"),  # SQLAlchemy
    ],
)
def test_another_librarys_pool_name_suggests_the_parameter_it_means(name: str, meant: str) -> None:
    error = config_error(**{name: 3})
    assert error.suggestion == f"did you mean {meant!r}?"
    with pytest.raises(ConfigError) as caught:
        parse("postgresql://app@db.example.test/app", **{name: 3})
    assert caught.value.suggestion == f"did you mean {meant!r}?"


def test_unknown_parameter_without_a_close_match_has_no_suggestion() -> None:
    error = config_error(colour="blue")
    assert str(error) == "unknown parameter 'colour'"
    assert error.suggestion is None


# --- secrets ---------------------------------------------------------------------------------


def test_secret_values_are_masked_in_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        DRIVER_PARAMETERS["mysql"]["ssl_key_password"].parse(31415926)
    assert "31415926" not in str(caught.value)
    assert caught.value.value == "***"


# --- the error type --------------------------------------------------------------------------


def test_config_error_is_a_value_error_and_a_library_error() -> None:
    error = config_error(role="boss")
    assert isinstance(error, ValueError)
    assert isinstance(error, AuroraSmartDriverError)


def test_config_error_keeps_its_attributes_through_pickling() -> None:
    error = config_error(pool_max_sise=3)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.parameter, copy.suggestion) == (
        str(error),
        error.parameter,
        error.suggestion,
    )


# --- the parameter reference -----------------------------------------------------------------


def test_reference_lists_every_parameter_under_its_section() -> None:
    text = parameter_reference_markdown()
    for parameter in PARAMETERS.values():
        section = text.index(f"## {parameter.section}\n")
        row = text.index(f"| `{parameter.name}` |")
        assert section < row, parameter.name
    assert "| `refresh_interval` | `5s` | s | Time between topology refreshes" in text
    assert "`sslmode`" in text
    assert "`ssl_verify_cert`" in text


def test_docs_parameters_md_is_up_to_date() -> None:
    expected = parameter_reference_markdown()
    actual = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert actual == expected, (
        "docs/parameters.md is out of date; regenerate it with "
        "`python -m aurora_smartdriver.settings > docs/parameters.md`"
    )


def test_running_the_module_prints_the_reference() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "aurora_smartdriver.settings"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == parameter_reference_markdown()
