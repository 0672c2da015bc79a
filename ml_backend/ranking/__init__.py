"""Which task next: acquisition functions, the scoring core, and publishing scores to Label Studio."""
