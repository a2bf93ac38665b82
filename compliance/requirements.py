"""What the aurora dialects support, for SQLAlchemy's compliance suite.

The dialects are SQLAlchemy's own psycopg and PyMySQL dialects with the library underneath, so
a feature is enabled here whenever PostgreSQL 15 (psycopg) or MariaDB 10.11 (PyMySQL), the
lab's servers, support it. Every requirement left closed, or closed for one engine, says why
in a comment: it is a feature the server (or SQLAlchemy's dialect for it) does not have, never
something the library breaks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.testing import exclusions
from sqlalchemy.testing.requirements import SuiteRequirements

PG = "postgresql"
MY = ["mysql", "mariadb"]


def _pg() -> exclusions.compound:
    return exclusions.only_on(PG)


def _both() -> exclusions.compound:
    return exclusions.open()


class Requirements(SuiteRequirements):
    # -- DDL --------------------------------------------------------------------------------
    @property
    def create_table_as(self) -> exclusions.compound:
        # SQLAlchemy's CreateTableAs construct: compiled for PostgreSQL; SQLAlchemy's MySQL
        # dialect does not implement it.
        return _pg()

    @property
    def create_temp_table_as(self) -> exclusions.compound:
        # as create_table_as
        return _pg()

    @property
    def table_ddl_if_exists(self) -> exclusions.compound:
        return _both()

    @property
    def index_ddl_if_exists(self) -> exclusions.compound:
        return _both()

    @property
    def uuid_data_type(self) -> exclusions.compound:
        # PostgreSQL's UUID type; MariaDB 10.7+ has one too (SQLAlchemy's mariadb dialect).
        return exclusions.only_on([PG, "mariadb"])

    @property
    def foreign_keys_reflect_as_index(self) -> exclusions.compound:
        # InnoDB creates an index for every foreign key; PostgreSQL does not.
        return exclusions.only_on(MY)

    @property
    def unique_index_reflect_as_unique_constraints(self) -> exclusions.compound:
        # MySQL has no unique constraint apart from a unique index.
        return exclusions.only_on(MY)

    @property
    def unique_constraints_reflect_as_index(self) -> exclusions.compound:
        # PostgreSQL backs each unique constraint with an index; so does MySQL.
        return _both()

    @property
    def table_value_constructor(self) -> exclusions.compound:
        # VALUES as a FROM item: PostgreSQL only (MariaDB's VALUES needs column names).
        return _pg()

    @property
    def non_updating_cascade(self) -> exclusions.compound:
        # Both enforce ON UPDATE CASCADE; the requirement is for backends that do not.
        return exclusions.closed()

    @property
    def deferrable_fks(self) -> exclusions.compound:
        # DEFERRABLE constraints: PostgreSQL only.
        return _pg()

    @property
    def repeated_column_foreign_keys(self) -> exclusions.compound:
        # MariaDB refuses a column named twice in one foreign key (1060).
        return _pg()

    @property
    def repeated_remote_col_foreign_keys(self) -> exclusions.compound:
        # Neither server accepts a referenced column twice in one foreign key.
        return exclusions.closed()

    @property
    def boolean_col_expressions(self) -> exclusions.compound:
        return _both()

    @property
    def nullsordering(self) -> exclusions.compound:
        # NULLS FIRST/LAST: PostgreSQL only.
        return _pg()

    @property
    def intersect(self) -> exclusions.compound:
        return _both()

    @property
    def except_(self) -> exclusions.compound:
        return _both()

    @property
    def window_functions(self) -> exclusions.compound:
        return _both()

    @property
    def window_range(self) -> exclusions.compound:
        return _both()

    @property
    def window_range_numeric(self) -> exclusions.compound:
        return _both()

    @property
    def window_range_non_numeric(self) -> exclusions.compound:
        # RANGE over dates/intervals: PostgreSQL; MariaDB's RANGE frames take numbers only.
        return _pg()

    @property
    def ctes(self) -> exclusions.compound:
        return _both()

    @property
    def ctes_with_update_delete(self) -> exclusions.compound:
        # WITH before UPDATE/DELETE: PostgreSQL; MariaDB 10.11 has no such syntax.
        return _pg()

    @property
    def ctes_with_values(self) -> exclusions.compound:
        # WITH ... (VALUES ...): PostgreSQL only.
        return _pg()

    @property
    def ctes_on_dml(self) -> exclusions.compound:
        # INSERT/UPDATE/DELETE inside a CTE: PostgreSQL only.
        return _pg()

    @property
    def tuple_in(self) -> exclusions.compound:
        return _both()

    @property
    def dbapi_lastrowid(self) -> exclusions.compound:
        # cursor.lastrowid: PyMySQL gives it; psycopg gives only an OID, which is not a row id.
        return exclusions.only_on(MY)

    @property
    def views(self) -> exclusions.compound:
        return _both()

    @property
    def cross_schema_fk_reflection(self) -> exclusions.compound:
        return _both()

    @property
    def implicit_default_schema(self) -> exclusions.compound:
        # PostgreSQL's "public" is reported as the default schema name.
        return _pg()

    @property
    def default_schema_name_switch(self) -> exclusions.compound:
        return _pg()

    @property
    def reflects_pk_names(self) -> exclusions.compound:
        # MySQL calls every primary key PRIMARY.
        return _pg()

    @property
    def reflect_tables_no_columns(self) -> exclusions.compound:
        # A table without columns: PostgreSQL only.
        return _pg()

    @property
    def temp_table_comment_reflection(self) -> exclusions.compound:
        return _pg()

    @property
    def comment_reflection(self) -> exclusions.compound:
        return _both()

    @property
    def comment_reflection_full_unicode(self) -> exclusions.compound:
        # MySQL's comment columns are utf8mb3 in information_schema.
        return _pg()

    @property
    def constraint_comment_reflection(self) -> exclusions.compound:
        # COMMENT ON CONSTRAINT: PostgreSQL only.
        return _pg()

    @property
    def column_collation_reflection(self) -> exclusions.compound:
        # The suite's table has a String() without length, which MySQL refuses (see
        # unbounded_varchar).
        return _pg()

    @property
    def schema_create_delete(self) -> exclusions.compound:
        return _both()

    @property
    def foreign_key_constraint_option_reflection_ondelete(self) -> exclusions.compound:
        return _both()

    @property
    def fk_constraint_option_reflection_ondelete_restrict(self) -> exclusions.compound:
        # MariaDB treats RESTRICT as the default and reflects no option for it.
        return _pg()

    @property
    def fk_constraint_option_reflection_ondelete_noaction(self) -> exclusions.compound:
        # MySQL reports NO ACTION as RESTRICT (they are the same there).
        return _pg()

    @property
    def foreign_key_constraint_option_reflection_onupdate(self) -> exclusions.compound:
        return _both()

    @property
    def fk_constraint_option_reflection_onupdate_restrict(self) -> exclusions.compound:
        # as fk_constraint_option_reflection_ondelete_restrict
        return _pg()

    @property
    def temp_table_names(self) -> exclusions.compound:
        # get_temp_table_names: SQLAlchemy implements it for PostgreSQL, not for MySQL.
        return _pg()

    @property
    def has_temp_table(self) -> exclusions.compound:
        return _both()

    @property
    def temporary_views(self) -> exclusions.compound:
        # CREATE TEMPORARY VIEW: PostgreSQL only.
        return _pg()

    @property
    def create_or_replace_view(self) -> exclusions.compound:
        return _both()

    @property
    def index_reflects_included_columns(self) -> exclusions.compound:
        # INCLUDE columns of an index: PostgreSQL only.
        return _pg()

    @property
    def reflect_indexes_with_ascdesc_as_expression(self) -> exclusions.compound:
        # Only Oracle reflects ASC/DESC as an expression; PostgreSQL gives column_sorting.
        return exclusions.closed()

    @property
    def indexes_check_column_order(self) -> exclusions.compound:
        return _both()

    @property
    def indexes_with_expressions(self) -> exclusions.compound:
        # Functional indexes: PostgreSQL; MariaDB has none (MySQL 8 has).
        return _pg()

    @property
    def reflect_indexes_with_expressions(self) -> exclusions.compound:
        return _pg()

    @property
    def inline_check_constraint_reflection(self) -> exclusions.compound:
        return _pg()

    @property
    def check_constraint_reflection(self) -> exclusions.compound:
        return _both()

    @property
    def nvarchar_types(self) -> exclusions.compound:
        return exclusions.only_on(MY)

    @property
    def unicode_ddl(self) -> exclusions.compound:
        return _both()

    # -- types ------------------------------------------------------------------------------
    @property
    def datetime_interval(self) -> exclusions.compound:
        # An INTERVAL type: PostgreSQL only.
        return _pg()

    @property
    def datetime_timezone(self) -> exclusions.compound:
        # timestamp with time zone: PostgreSQL only.
        return _pg()

    @property
    def time_timezone(self) -> exclusions.compound:
        # psycopg returns time with time zone without its offset for a naive comparison; the
        # PostgreSQL dialect does not claim it either.
        return exclusions.closed()

    @property
    def timestamp_microseconds(self) -> exclusions.compound:
        # MySQL's TIMESTAMP without fractional seconds, as SQLAlchemy renders it.
        return _pg()

    @property
    def datetime_historic(self) -> exclusions.compound:
        return _both()

    @property
    def datetime_timezone_historic(self) -> exclusions.compound:
        return _pg()

    @property
    def date_historic(self) -> exclusions.compound:
        return _both()

    @property
    def autocommit(self) -> exclusions.compound:
        return _both()

    @property
    def skip_autocommit_rollback(self) -> exclusions.compound:
        return _both()

    @property
    def array_type(self) -> exclusions.compound:
        return _pg()

    @property
    def json_type(self) -> exclusions.compound:
        return _both()

    @property
    def precision_numerics_enotation_small(self) -> exclusions.compound:
        return _both()

    @property
    def precision_numerics_many_significant_digits(self) -> exclusions.compound:
        return _pg()

    @property
    def server_defaults(self) -> exclusions.compound:
        return _both()

    @property
    def expression_server_defaults(self) -> exclusions.compound:
        return _both()

    @property
    def aggregate_order_by(self) -> exclusions.compound:
        return _both()

    @property
    def infinity_floats(self) -> exclusions.compound:
        # MySQL has no infinite floats.
        return _pg()

    @property
    def float_or_double_precision_behaves_generically(self) -> exclusions.compound:
        return _pg()

    # -- transactions and DML ---------------------------------------------------------------
    @property
    def savepoints(self) -> exclusions.compound:
        return _both()

    @property
    def two_phase_transactions(self) -> exclusions.compound:
        # The lab's PostgreSQL runs with max_prepared_transactions=0 (the default, as on
        # Aurora, which supports no prepared transactions); XA on MariaDB is not something an
        # Aurora cluster offers through failover either.
        return exclusions.closed()

    @property
    def update_from(self) -> exclusions.compound:
        return _both()

    @property
    def delete_from(self) -> exclusions.compound:
        return _both()

    @property
    def mod_operator_as_percent_sign(self) -> exclusions.compound:
        return _both()

    @property
    def percent_schema_names(self) -> exclusions.compound:
        return _both()

    @property
    def order_by_label_with_expression(self) -> exclusions.compound:
        return _both()

    @property
    def computed_columns(self) -> exclusions.compound:
        # MariaDB; PostgreSQL 15 has STORED generated columns only, and SQLAlchemy warns (an
        # error in the suite) for the suite's Computed() without persisted=, which means
        # VIRTUAL there (PostgreSQL 18+).
        return exclusions.only_on(MY)

    @property
    def computed_columns_stored(self) -> exclusions.compound:
        # as computed_columns
        return exclusions.only_on(MY)

    @property
    def computed_columns_virtual(self) -> exclusions.compound:
        # VIRTUAL generated columns: MariaDB; PostgreSQL 15 has stored ones only.
        return exclusions.only_on(MY)

    @property
    def computed_columns_default_persisted(self) -> exclusions.compound:
        # MariaDB's default is VIRTUAL.
        return exclusions.closed()

    @property
    def supports_distinct_on(self) -> exclusions.compound:
        return _pg()

    @property
    def identity_columns(self) -> exclusions.compound:
        # GENERATED ... AS IDENTITY: PostgreSQL only.
        return _pg()

    @property
    def identity_columns_standard(self) -> exclusions.compound:
        return _pg()

    @property
    def regexp_match(self) -> exclusions.compound:
        return _both()

    @property
    def regexp_replace(self) -> exclusions.compound:
        return _both()

    @property
    def fetch_first(self) -> exclusions.compound:
        return _pg()

    @property
    def fetch_ties(self) -> exclusions.compound:
        return _pg()

    @property
    def fetch_no_order_by(self) -> exclusions.compound:
        return _pg()

    @property
    def fetch_offset_with_options(self) -> exclusions.compound:
        return _pg()

    @property
    def fetch_expression(self) -> exclusions.compound:
        return _pg()

    @property
    def fetch_percent(self) -> exclusions.compound:
        # FETCH FIRST n PERCENT: neither PostgreSQL nor MariaDB.
        return exclusions.closed()

    @property
    def json_deserializer_binary(self) -> exclusions.compound:
        # JSONB arrives as bytes to a custom deserializer only with psycopg2's binary JSONB;
        # psycopg 3 hands text.
        return exclusions.closed()

    @property
    def reflect_table_options(self) -> exclusions.compound:
        return _both()

    @property
    def materialized_views(self) -> exclusions.compound:
        return _pg()

    @property
    def materialized_views_reflect_pk(self) -> exclusions.compound:
        # No primary key on a materialized view in PostgreSQL.
        return exclusions.closed()

    @property
    def supports_bitwise_or(self) -> exclusions.compound:
        return _both()

    @property
    def supports_bitwise_and(self) -> exclusions.compound:
        return _both()

    @property
    def supports_bitwise_not(self) -> exclusions.compound:
        # MySQL's ~ works on unsigned 64-bit integers, so ~(a - 2) is not the negation the
        # suite expects.
        return _pg()

    @property
    def supports_bitwise_xor(self) -> exclusions.compound:
        return _both()

    @property
    def supports_bitwise_shift(self) -> exclusions.compound:
        return _both()

    @property
    def emulated_lastrowid_even_with_sequences(self) -> exclusions.compound:
        # Only for dialects that emulate lastrowid while having sequences (not these two).
        return exclusions.closed()

    @property
    def async_dialect(self) -> exclusions.compound:
        # The library's dialects are synchronous (no asyncio front yet).
        return exclusions.closed()

    @property
    def computed_columns_reflect_persisted(self) -> exclusions.compound:
        return _both()

    @property
    def sql_expression_limit_offset(self) -> exclusions.compound:
        # MySQL's LIMIT/OFFSET take literals or placeholders only, not expressions.
        return _pg()

    @property
    def unbounded_varchar(self) -> exclusions.compound:
        # MySQL's VARCHAR needs a length.
        return _pg()

    @property
    def precision_generic_float_type(self) -> exclusions.compound:
        # MySQL's FLOAT is single precision.
        return _pg()

    @property
    def datetime_microseconds(self) -> exclusions.compound:
        # SQLAlchemy's generic DateTime is DATETIME without fractional seconds on MySQL.
        return _pg()

    @property
    def time_microseconds(self) -> exclusions.compound:
        # as datetime_microseconds, for TIME
        return _pg()

    @property
    def date_implicit_bound(self) -> exclusions.compound:
        # PyMySQL sends bound values as literals, so a bare bound date comes back as text.
        return _pg()

    @property
    def time_implicit_bound(self) -> exclusions.compound:
        # as date_implicit_bound
        return _pg()

    @property
    def datetime_implicit_bound(self) -> exclusions.compound:
        # as date_implicit_bound
        return _pg()

    @property
    def timestamp_microseconds_implicit_bound(self) -> exclusions.compound:
        # as date_implicit_bound
        return _pg()

    @property
    def datetime_literals(self) -> exclusions.compound:
        return _both()

    @property
    def precision_numerics_retains_significant_digits(self) -> exclusions.compound:
        return _both()

    @property
    def legacy_unconditional_json_extract(self) -> exclusions.compound:
        # JSON_EXTRACT returning JSON text in all cases: MySQL's; PostgreSQL's -> is typed.
        return exclusions.only_on(MY)

    def get_order_by_collation(self, config: Any) -> str:
        # A binary collation each server has, for the COLLATE tests.
        return "POSIX" if config.db.dialect.name == PG else "utf8mb4_bin"

    # -- decided by the dialect (kept as SQLAlchemy computes them, said here) ---------------
    @property
    def update_returning(self) -> exclusions.compound:
        # SQLAlchemy's dialect flag: MariaDB 10.11 has INSERT/DELETE ... RETURNING, not UPDATE.
        return super().update_returning

    @property
    def sequences_optional(self) -> exclusions.compound:
        # SQLAlchemy's dialect flags: MariaDB's sequences are never optional for a primary key
        # (SQLAlchemy uses AUTO_INCREMENT there).
        return super().sequences_optional


# Skips that no requirement decides: the suite itself runs some tests on one backend only
# (e.g. ComponentReflectionTestExtra.test_string_length_reflection for NCHAR/NVARCHAR runs on
# MySQL only, "not mysql and not mariadb" on PostgreSQL).
