"""The data schema a participant declares when it joins a task: the rules it must meet, and the
task's schema merged from its members' (what the aggregator builds the model from)."""
from __future__ import annotations

from werkbund.platform.definition import column_difference, describe_column_difference
from werkbund.platform.errors import InvalidInput, SchemaMismatch
from werkbund.platform.tables import Task

AGREED_SCHEMA_KEYS = ("kind", "features", "target")
# a declared row count beyond this is no data set (and beyond 2**53 not a JSON number every client reads)
MAX_DECLARED_SAMPLES = 10**12


def check_join_schema(row: Task, schema: dict) -> None:
    """Refuse (InvalidInput, SchemaMismatch, with the reason) a data schema that does not fit the task
    or its members: a row count beyond the bounds, another kind, other columns or target, class labels
    with nothing in common with theirs. The same columns in another order are accepted."""
    count = schema.get("n_samples")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                              or not 1 <= count <= MAX_DECLARED_SAMPLES):
        raise InvalidInput(f"the data schema's n_samples must be a whole number of rows between 1 and "
                           f"{MAX_DECLARED_SAMPLES}, not {count!r}")
    most = (row.definition.get("selection") or {}).get("max_samples")
    if most is not None and count is not None and count > most:
        raise SchemaMismatch(f"task {row.name!r} takes at most {most} rows per participant "
                             f"(selection.max_samples); you declared {count}")
    declared = row.definition.get("kind")
    if declared and schema.get("kind", "classification") != declared:
        raise SchemaMismatch(f"task {row.name!r} is a {declared} task; your data was loaded for "
                             f"{schema.get('kind', 'classification')} (join with --kind {declared})")
    for member in row.memberships:
        theirs = member.schema or {}
        for key in AGREED_SCHEMA_KEYS:
            if key not in theirs or theirs.get(key) == schema.get(key):
                continue
            if key == "features" and isinstance(schema.get(key), list) and isinstance(theirs[key], list):
                missing, extra = column_difference(schema[key], theirs[key])
                if not missing and not extra:
                    continue  # the same columns in another order: the participant's client reorders them
                raise SchemaMismatch(f"your data does not match task {row.name!r}: "
                                     f"{describe_column_difference(missing, extra)}")
            raise SchemaMismatch(
                f"your data does not match task {row.name!r}: its {key} is {theirs.get(key)!r}, "
                f"yours is {schema.get(key)!r}"
            )
    kind = schema.get("kind", "classification")
    known = {str(c) for m in row.memberships if (m.schema or {}).get("classes")
             for c in m.schema["classes"]}
    yours = {str(c) for c in schema.get("classes") or []}
    if kind == "classification" and known and yours and not known & yours:
        raise SchemaMismatch(
            f"your class labels {sorted(yours)[:10]} have none in common with those of task {row.name!r}'s "
            f"members {sorted(known)[:10]}: the same classes must carry the same labels (e.g. 0/1 against "
            "benign/malignant), or the model learns one class per label")

def merged_schema(row: Task) -> dict | None:
    """The task's schema from its members': the agreed keys, the union of classes, the total rows."""
    schemas = [m.schema for m in row.memberships if m.schema]
    if not schemas:
        return None
    merged = {key: schemas[0].get(key) for key in AGREED_SCHEMA_KEYS}
    classes = set()
    for schema in schemas:
        classes.update(schema.get("classes") or [])
    merged["classes"] = sorted(classes, key=lambda c: (not isinstance(c, (int, float)), c if isinstance(c, (int, float)) else str(c)))
    merged["n_samples"] = sum(int(s.get("n_samples") or 0) for s in schemas)
    return merged
