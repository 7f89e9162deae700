"""From the staged rows to the output layout, once the first pass has seen every row.

* field-aware libFM: the staged bag of (field, id, weight) becomes one sparse field per field seen;
* dense transforms with train statistics: ``standardize`` columns get their mean and std,
  ``quantile`` columns their bucket edges and become sparse fields (``recsys.data.transforms``);
* the ``dataset.json`` field entries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pyarrow as pa

from recsys.data.fieldaware import FieldCounters, field_name, split_fields
from recsys.data.formats import InputFormat, SparseSource
from recsys.data.transforms import SLOG1P_SPEC, DenseStats, TransformKind, apply_dense, bucket_ids, bucket_table
from recsys.data.vocab import CountTable, Vocabulary
from recsys.features import FieldSpec, TransformParams, id_column, weight_column

VOCAB_DIR = "vocab"


@dataclass
class OutputLayout:
    """The output's fields, how staged batches become them, and the recorded transforms."""

    final: InputFormat  # dense and sparse fields of the output
    counters: list[CountTable]  # train counts of each counted sparse field (not the bucket fields)
    bags: dict[str, list[int]]  # staged bag of fields -> its field codes
    params: dict[str, TransformParams]  # dense or bucket field -> its train statistics
    kinds: dict[str, TransformKind]  # field -> transform name

    def finish_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A staged batch with its bags split per field, standardized columns and bucket ids added."""
        names, arrays = list(batch.schema.names), list(batch.columns)
        for bag, codes in self.bags.items():
            for name, (ids, weights) in split_fields(batch, bag, codes).items():
                names += [id_column(name), weight_column(name)]
                arrays += [ids, weights]
        for name, params in self.params.items():
            raw = batch.column(name).to_numpy(zero_copy_only=False)
            if self.kinds[name] == "quantile":
                names.append(id_column(name))
                arrays.append(pa.array(bucket_ids(raw, params.edges or []), pa.int64()))
            else:
                arrays[names.index(name)] = pa.array(apply_dense(raw, self.kinds[name], params), pa.float32())
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def bucket_vocabularies(self) -> list[Vocabulary]:
        """Vocabularies of the bucket fields: bucket b is index b + 2 (counts filled while writing train)."""
        vocabs = []
        for src in self.final.sparse:
            if src.kind == "bucket":
                buckets = len(self.params[src.name].edges or []) + 1
                vocabs.append(Vocabulary(bucket_table(buckets), np.zeros(buckets, np.int64), buckets))
        return vocabs


def output_layout(layout: InputFormat, counters: Sequence[CountTable | FieldCounters], stats: dict[str, DenseStats]) -> OutputLayout:
    """The output layout after the first pass (``counters`` per staged sparse source, ``stats`` per dense column)."""
    sparse: list[SparseSource] = []
    counts: list[CountTable] = []
    bags: dict[str, list[int]] = {}
    for src, counter in zip(layout.sparse, counters):
        if isinstance(counter, FieldCounters):
            bags[src.name] = counter.codes()
            for code in bags[src.name]:
                sparse.append(SparseSource(field_name(code), src.column, "libfm"))
                counts.append(counter.counters[code])
        else:
            sparse.append(src)
            counts.append(counter)
    specs = {n: layout.transforms.get(n, SLOG1P_SPEC) for n in layout.dense}
    params = {n: stats[n].params(spec) for n, spec in specs.items() if spec.needs_stats}
    dense = [n for n in layout.dense if specs[n].kind != "quantile"]
    sparse += [SparseSource(n, n, "bucket") for n in layout.dense if specs[n].kind == "quantile"]
    kinds = {n: spec.kind for n, spec in specs.items()}
    return OutputLayout(replace(layout, dense=dense, sparse=sparse), counts, bags, params, kinds)


def field_specs(out: OutputLayout, vocabs: Sequence[Vocabulary]) -> list[FieldSpec]:
    """The ``dataset.json`` fields: dense (with transform), then sparse (bucket fields with their edges)."""
    fields = [FieldSpec(name=n, kind="dense", transform=out.kinds[n], transform_params=out.params.get(n)) for n in out.final.dense]
    for src, vocab in zip(out.final.sparse, vocabs):
        bucket = src.kind == "bucket"
        fields.append(
            FieldSpec(
                name=src.name,
                kind="sparse",
                cardinality=vocab.cardinality,
                vocabulary=f"{VOCAB_DIR}/{src.name}.parquet",
                num_distinct=int(np.count_nonzero(vocab.counts)) if bucket else vocab.num_distinct,
                multi_valued=src.multi_valued,
                weighted=src.weighted,
                transform="quantile" if bucket else None,
                transform_params=out.params.get(src.name) if bucket else None,
            )
        )
    return fields
