"""Results as pandas objects. pandas is optional: it is imported only here, and
only when a ``to_pandas`` method is called.

The shapes follow ``guardian collect``'s tables: parallel arrays (a histogram's
``{"buckets": [...], "counts": [...]}``) become one row per element, indexed by
the label column when there is one; a plain array becomes a ``value`` column;
scalars beside the arrays (a mean's ``count``) become columns repeated on every
row; a lone scalar becomes one row with a ``value`` column.
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import GuardianError


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise GuardianError(
            "pandas_missing",
            "to_pandas needs pandas: pip install 'privacy-guardian[pandas]' (or pip install pandas)",
        ) from None
    return pandas


def _scalar(value: Any) -> bool:
    return not isinstance(value, (list, dict))


def result_frame(result: Any) -> Any:
    """One result as a DataFrame."""
    pd = _pandas()
    if isinstance(result, list) and all(_scalar(v) for v in result):
        return pd.DataFrame({"value": result})
    if isinstance(result, dict):
        columns = {k: v for k, v in result.items() if isinstance(v, list)}
        scalars = {k: v for k, v in result.items() if not isinstance(v, list)}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) <= 1 and all(_scalar(v) for v in scalars.values()) and all(
            all(_scalar(x) for x in v) for v in columns.values()
        ):
            if not columns:
                return pd.DataFrame([scalars])
            labels = [k for k, v in columns.items() if any(isinstance(x, str) for x in v)]
            frame = pd.DataFrame(columns)
            for key, value in scalars.items():
                frame[key] = value
            if labels:
                frame = frame.set_index(labels[0])
            return frame
        return pd.json_normalize(result)
    if _scalar(result):
        return pd.DataFrame({"value": [result]})
    return pd.json_normalize(result)


def history_frame(results: Sequence[Any]) -> Any:
    """Released batches over time: a Series of a scalar result, else a DataFrame
    with one column per bucket or element, indexed by when each batch was sealed."""
    pd = _pandas()
    index = pd.to_datetime([r.sealed_at for r in results], utc=True, format="ISO8601") if results else []
    if results and all(_scalar(r.result) for r in results):
        return pd.Series([r.result for r in results], index=index, name=results[0].endpoint)
    rows = []
    for r in results:
        frame = result_frame(r.result)
        numeric = frame.select_dtypes("number")
        values = numeric.iloc[:, 0] if len(numeric.columns) else frame.iloc[:, 0]
        row = {str(k): v for k, v in values.items()}
        row["count"] = r.count
        rows.append(row)
    return pd.DataFrame(rows, index=index)
