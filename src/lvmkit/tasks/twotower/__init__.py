"""The two-tower retrieval task."""
