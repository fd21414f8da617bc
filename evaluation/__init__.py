"""The evaluations that eval.py runs on a trained run, one module per task (SPEC §4):

    val_loss              loss, perplexity and loss by token position on the held-out split
    length_extrapolation  perplexity at multiples of the training length, with and without NTK-aware RoPE
    passkey               passkey retrieval with 1, 2, 4 keys over lengths × depths
    zero_shot             the paper's zero-shot tasks through lm-evaluation-harness
    sample                text generated from a prompt

Each task module has ``check(ctx)`` (validates its options before anything runs) and
``run(ctx) -> dict`` (the JSON-ready result); ``ctx`` is an ``evaluation.context.EvalContext``.
"""
