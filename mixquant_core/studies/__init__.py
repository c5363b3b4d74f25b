"""Stage 8, questions asked of many evaluations: which allocation wins (compare), which plan fits
an accuracy budget (tradeoff, target), which layer kind is most sensitive, how fast an export runs
against float32 (latency). Imports workspace and below."""
