"""Everything CDS Hooks: discovery, hook requests and their drafts, prefetch, cards, client JWTs, feedback and its storage."""
