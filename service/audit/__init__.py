"""The audit chain: hashes that make the append-only history tamper-evident (chain), the
sealer that computes them off the hot path (sealer), signed checkpoints (signing) and the
verification an auditor runs (verify)."""
