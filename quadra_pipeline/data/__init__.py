"""Training text: sources of raw rows and the batches made from them.

    from quadra_pipeline.data import open_source, iter_batches, check_usable

    source = open_source()                        # seeded wikitext-shaped corpus (no network)
    source = open_source("file", path="corpus.jsonl", text_field="text")
    source = open_source("huggingface", name="wikitext", config="wikitext-2-raw-v1")
    check_usable(source)                          # fail fast on a source without usable text
    for batch in iter_batches(source, rows_per_batch=10, start_row=0):
        batch.index, batch.first_row, batch.rows_consumed, batch.texts
    # resume exactly after `batch`: iter_batches(source, 10, start_row=batch.next_row)

Every data problem raises :class:`DataSourceError` with one message naming the source.
"""

from .batching import MIN_TEXT_CHARS, Batch, check_usable, is_usable, iter_batches
from .files import FileSource
from .huggingface import HuggingFaceSource
from .sources import SOURCE_KINDS, DataSourceError, TextSource, open_source, source_label
from .synthetic import GENERATOR_VERSION, SyntheticSource

__all__ = [
    "GENERATOR_VERSION",
    "MIN_TEXT_CHARS",
    "SOURCE_KINDS",
    "Batch",
    "DataSourceError",
    "FileSource",
    "HuggingFaceSource",
    "SyntheticSource",
    "TextSource",
    "check_usable",
    "is_usable",
    "iter_batches",
    "open_source",
    "source_label",
]
