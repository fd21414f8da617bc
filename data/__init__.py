"""The data pipeline: tokenizers, text sources → token shards, and the loaders that read them.

What training needs is re-exported here:
    ensure_prepared(data_cfg) -> Path        the shard folder (prepares the built-in corpus itself)
    read_meta(shard_dir) -> dict             tokenizer, vocab_size, eot_token, splits, ...
    TokenLoader(shard_dir, split, batch_size, seq_len, rank, world_size, seed, bos_aligned)
    validation_batches(shard_dir, batch_size, seq_len, max_batches, rank, world_size)
    document_ids(x, eot_token), positions_in_document(doc_ids)   boundaries in packed windows
"""

from data.documents import document_ids, positions_in_document
from data.loader import TokenLoader, validation_batches
from data.meta import read_meta
from data.prepare import ensure_prepared

__all__ = ["TokenLoader", "document_ids", "ensure_prepared", "positions_in_document", "read_meta",
           "validation_batches"]
