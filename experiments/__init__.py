"""Decision records: scripts that measured a choice once (each says what it decided, and where docs/ writes it up).

Nothing in the product imports them. Each still runs on the current code, to check a decision again.
"""
