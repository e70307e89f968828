"""POPE and CHAIR: building question sets, parsing answers, scoring, and the batched, resumable generation runner.

Modules: ``pope`` (construction, parsers, metrics), ``chair`` + ``text`` (CHAIR vocabulary, tokenisation,
lemmatisation, ground truth, metrics), ``coco`` (annotation loading and checks), ``generate`` (batched prompting),
``runner`` (resume and sharding), ``tasks`` (whole runs), ``scoring`` (files made elsewhere), ``cli`` (click groups).
Nothing heavy is imported here so that ``vlmfix score`` starts fast.
"""
