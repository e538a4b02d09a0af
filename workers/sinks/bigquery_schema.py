"""Schema evolution for the BigQuery sink: how an existing table's schema must change to fit its spec.

Pure (no I/O): :func:`compare_schema` reads a table's fields and layout against a
:class:`~schemas.tables.TableSpec` and returns a :class:`SchemaPlan`; the sink applies it. The rules
(a sync only ever widens a table; anything else is a migration's job or an operator's):

- a spec column the table lacks is **added** at the end, NULLABLE or REPEATED: BigQuery cannot add a
  REQUIRED column to a table that has rows, so a spec-REQUIRED column is added NULLABLE;
- a table column REQUIRED where the spec says NULLABLE is **relaxed** to NULLABLE (BigQuery allows it);
- a table column NULLABLE where the spec says REQUIRED is **accepted** as it is (CTAS makes every
  column NULLABLE; loads and MERGEs still work);
- a table column the spec does not know is **refused**: possync never drops a column;
- a column whose type differs, or that is REPEATED on one side only, is **refused**: retyping rewrites
  the table, which ``possync migrate partition TABLE`` does;
- partitioning and clustering that differ are only **reported** (``layout_differs``): the table stays
  writable, a migration gives it the spec's layout.

Column names match case-insensitively, as BigQuery's do. Types compare by their GoogleSQL names
(the API may answer with legacy ones: ``INTEGER``, ``FLOAT``, ``BOOLEAN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.cloud import bigquery

from schemas.tables import Column, TableSpec

__all__ = [
    "Layout",
    "Retyped",
    "SchemaPlan",
    "compare_schema",
    "evolved_schema",
    "refusal_message",
    "spec_layout",
    "table_layout",
]

#: Legacy SQL type names the API may report, by their GoogleSQL names (what specs use).
_TYPE_ALIASES = {
    "INTEGER": "INT64",
    "FLOAT": "FLOAT64",
    "BOOLEAN": "BOOL",
    "BIGDECIMAL": "BIGNUMERIC",
    "RECORD": "STRUCT",
}


def _standard_type(field_type: str) -> str:
    upper = field_type.upper()
    return _TYPE_ALIASES.get(upper, upper)


@dataclass(frozen=True)
class Retyped:
    """A column whose type (or REPEATED-ness) differs between table and spec.

    Attributes:
        name: the column's name as the table spells it.
        table_type: the table's type, GoogleSQL name, ``ARRAY<...>`` when REPEATED.
        spec_type: the spec's type, likewise.
    """

    name: str
    table_type: str
    spec_type: str


@dataclass(frozen=True)
class Layout:
    """A table's partitioning and clustering, comparable between table and spec.

    Attributes:
        partition_field: the time-partitioning column; ``None`` when not partitioned by a column.
        partition_granularity: ``DAY``, ``HOUR``...; ``None`` when not time-partitioned.
        clustering: clustering columns in order.
    """

    partition_field: str | None
    partition_granularity: str | None
    clustering: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """For logs: JSON-ready."""
        return {
            "partition_field": self.partition_field,
            "partition_granularity": self.partition_granularity,
            "clustering": list(self.clustering),
        }


@dataclass(frozen=True)
class SchemaPlan:
    """What an existing table needs to fit its spec (see the module docstring for the rules).

    Attributes:
        table: the table's name.
        add: spec columns to append, in spec order, with the mode they are added with.
        add_as_nullable: names in ``add`` the spec has REQUIRED (added NULLABLE).
        relax: table columns to relax from REQUIRED to NULLABLE, as the table spells them.
        unknown: table columns the spec does not have, as the table spells them.
        retyped: columns whose types differ.
        layout_differs: the table's partitioning or clustering is not the spec's.
        expected_layout: the spec's layout.
        actual_layout: the table's layout.
    """

    table: str
    add: tuple[Column, ...]
    add_as_nullable: tuple[str, ...]
    relax: tuple[str, ...]
    unknown: tuple[str, ...]
    retyped: tuple[Retyped, ...]
    layout_differs: bool
    expected_layout: Layout
    actual_layout: Layout

    @property
    def refused(self) -> bool:
        """The table has a column possync will not drop or retype."""
        return bool(self.unknown or self.retyped)

    @property
    def changes_schema(self) -> bool:
        """Columns are to be added or relaxed."""
        return bool(self.add or self.relax)


def spec_layout(spec: TableSpec) -> Layout:
    """The layout ``spec`` asks for."""
    return Layout(
        partition_field=spec.partition_field,
        partition_granularity=spec.partition_granularity if spec.partition_field is not None else None,
        clustering=spec.clustering,
    )


def table_layout(table: bigquery.Table) -> Layout:
    """The layout ``table`` has (range partitioning counts as no time partitioning)."""
    partitioning = table.time_partitioning
    return Layout(
        partition_field=partitioning.field if partitioning is not None else None,
        partition_granularity=str(partitioning.type_) if partitioning is not None else None,
        clustering=tuple(table.clustering_fields or ()),
    )


def _display_type(field_type: str, mode: str) -> str:
    return f"ARRAY<{field_type}>" if mode == "REPEATED" else field_type


def compare_schema(spec: TableSpec, fields: Sequence[bigquery.SchemaField], layout: Layout) -> SchemaPlan:
    """Compare a table's top-level fields and layout with its spec.

    Args:
        spec: what the code expects.
        fields: the table's schema (``table.schema``).
        layout: the table's layout (:func:`table_layout`).

    Returns:
        The plan: columns to add and relax, columns refused, and whether the layout differs.
    """
    wanted = {column.name.lower(): column for column in spec.columns}
    present = {field.name.lower(): field for field in fields}
    unknown = tuple(field.name for field in fields if field.name.lower() not in wanted)
    retyped: list[Retyped] = []
    relax: list[str] = []
    for field in fields:
        column = wanted.get(field.name.lower())
        if column is None:
            continue
        table_mode = field.mode.upper()
        table_type = _standard_type(field.field_type)
        if table_type != column.type or (table_mode == "REPEATED") != (column.mode == "REPEATED"):
            retyped.append(
                Retyped(
                    name=field.name,
                    table_type=_display_type(table_type, table_mode),
                    spec_type=_display_type(column.type, column.mode),
                )
            )
        elif table_mode == "REQUIRED" and column.mode == "NULLABLE":
            relax.append(field.name)
    add: list[Column] = []
    add_as_nullable: list[str] = []
    for column in spec.columns:
        if column.name.lower() in present:
            continue
        if column.mode == "REQUIRED":
            add_as_nullable.append(column.name)
            column = column.model_copy(update={"mode": "NULLABLE"})
        add.append(column)
    expected = spec_layout(spec)
    return SchemaPlan(
        table=spec.name,
        add=tuple(add),
        add_as_nullable=tuple(add_as_nullable),
        relax=tuple(relax),
        unknown=unknown,
        retyped=tuple(retyped),
        layout_differs=expected != layout,
        expected_layout=expected,
        actual_layout=layout,
    )


def refusal_message(plan: SchemaPlan) -> str | None:
    """Why possync will not write to the table, for the operator; ``None`` if it will."""
    reasons: list[str] = []
    if plan.unknown:
        reasons.append(
            f"{plan.table} has columns the code does not know: {', '.join(plan.unknown)}; "
            "possync never drops columns: remove them by hand or restore them in schemas/tables.py"
        )
    if plan.retyped:
        columns = ", ".join(
            f"{change.name} is {change.table_type} in the table but {change.spec_type} in schemas/tables.py"
            for change in plan.retyped
        )
        reasons.append(
            f"{plan.table} has columns of another type than the code expects: {columns}; "
            "possync never retypes columns during a sync: retyping is a migration's job "
            f"(`possync migrate partition {plan.table}` rewrites the table with the spec's types; "
            "try --dry-run first)"
        )
    return "; and ".join(reasons) if reasons else None


def evolved_schema(fields: Sequence[bigquery.SchemaField], plan: SchemaPlan) -> list[bigquery.SchemaField]:
    """The table's schema with ``plan``'s columns relaxed and added; everything else kept as is.

    Raises:
        ValueError: if the plan is refused (there is no schema possync may give the table).
    """
    if plan.refused:
        raise ValueError(f"{plan.table}: a refused plan has no evolved schema")
    relax = {name.lower() for name in plan.relax}
    evolved = [
        bigquery.SchemaField.from_api_repr({**field.to_api_repr(), "mode": "NULLABLE"})
        if field.name.lower() in relax
        else field
        for field in fields
    ]
    evolved.extend(
        bigquery.SchemaField(column.name, column.type, mode=column.mode, description=column.description)
        for column in plan.add
    )
    return evolved
