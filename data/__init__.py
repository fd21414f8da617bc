"""The data pipeline: tokenizers, text sources → token shards, and the loaders that read them.

What training needs is in data.loader:
    ensure_prepared(data_cfg) -> Path        the shard folder (prepares the built-in corpus itself)
    read_meta(shard_dir) -> dict             tokenizer, vocab_size, eot_token, splits, ...
    TokenLoader(shard_dir, split, batch_size, seq_len, rank, world_size, seed, bos_aligned)
    validation_batches(shard_dir, batch_size, seq_len, max_batches, rank, world_size)
and in data.documents: document_ids(x, eot_token), positions_in_document(doc_ids), the document
boundaries inside packed windows. Command lines: `python -m data.prepare`, `python -m data.tokenizer`.
(This file imports nothing, so that `python -m data.<module>` runs each module once.)
"""
