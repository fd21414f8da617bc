"""Measuring tools: kernel benchmark, register tables, profiles, training and data throughput, A/B harnesses.
They may import anything in the project; nothing in the project imports them."""
