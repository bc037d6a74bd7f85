"""Feature shards as MLflow datasets: metadata only (the shards stay where they are), a profile and a column schema."""
from __future__ import annotations

import hashlib
import json

from mlflow.data.meta_dataset import MetaDataset


class ShardDataset(MetaDataset):
    """Feature shards as an MLflow dataset: metadata only (the shards stay where they are), plus a profile.

    MLflow's ``MetaDataset`` has no profile, so the UI's Dataset drawer said "No profile available"; MLflow's
    own datasets (numpy, pandas) put theirs as JSON under ``profile`` in ``to_dict``, as this one does.
    """

    def __init__(self, source, name: str, digest: str, schema=None, profile: dict | None = None):
        self._profile = profile
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict | None:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        if self._profile is not None:
            config["profile"] = json.dumps(self._profile)
        return config


def _mlflow_schema(columns):
    """A pyarrow schema (the shards') as an MLflow column schema, which the Dataset drawer lists; a fixed-size
    list (the features) becomes an array of its item type. Hand-written: MLflow infers schemas from pandas or
    numpy data, not from a pyarrow schema, and the shards need not be read for it."""
    import pyarrow as pa
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    def dtype(t):
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            return DataType.string
        if pa.types.is_boolean(t):
            return DataType.boolean
        if pa.types.is_integer(t):
            return DataType.long if t.bit_width > 32 else DataType.integer
        if pa.types.is_float32(t) or pa.types.is_float16(t):
            return DataType.float
        if pa.types.is_floating(t):
            return DataType.double
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
            return Array(dtype(t.value_type))
        return DataType.string

    return Schema([ColSpec(dtype(f.type), f.name, required=not f.nullable) for f in columns])



def dataset_inputs(name: str, sources: list[str], digest: str, contexts: dict[str, dict], columns=None) -> list:
    """The run inputs for the shards in ``sources``: one ``DatasetInput`` per context (``training``/``validation``/
    ``test``, each ``{"profile": {...}, "tags": {...}}``) whose digest is the data fingerprint ``digest`` and the
    context's speakers, whose schema is the shards' columns (``columns``: a pyarrow schema) and whose tags repeat
    the counts."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all of them local folders
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(",".join(sources))
    schema = _mlflow_schema(columns) if columns is not None else None
    # one dataset per context (MLflow keeps one input per dataset and run): the split's speakers are part of its digest
    inputs = []
    for ctx, about in contexts.items():
        tags = about.get("tags", {})
        split_digest = hashlib.sha256(f"{digest}\t{ctx}\t{tags.get('speakers_digest', '')}".encode()).hexdigest()[:16]
        entity = ShardDataset(source, name=f"{name} {ctx}", digest=split_digest, schema=schema, profile=about.get("profile"))._to_mlflow_entity()
        inputs.append(DatasetInput(entity, [InputTag("mlflow.data.context", ctx), InputTag("data_fingerprint", digest),
                                            *(InputTag(k, str(v)) for k, v in tags.items())]))
    return inputs
