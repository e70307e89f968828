"""POPE and CHAIR: building question sets, parsing answers, scoring, and the batched, resumable generation runner."""
